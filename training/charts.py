"""Line charts as inline SVG, drawn on the server: no JavaScript library, no CDN, readable without scripts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 520, 180
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28  # room for the axis labels


@dataclass
class Chart:
    svg: SafeString
    last: float | None


def _nice(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.1e}"


def line_chart(points: Sequence[tuple[float, float | None]], title: str, y_range: tuple[float, float] | None = None,
               reference: float | None = None) -> Chart:
    """(x, y) points as a polyline with min/max axis labels; None values are skipped.

    ``y_range`` fixes the axis (e.g. 0–1 for an accuracy); ``reference`` draws a dashed horizontal line
    (e.g. ln 2, where DPO's loss starts).
    """
    kept = [(float(x), float(y)) for x, y in points if y is not None and math.isfinite(y)]
    if not kept:
        empty = format_html('<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}: no data yet">'
                            '<text x="{}" y="{}" class="chart-empty">{}: no data yet</text></svg>',
                            WIDTH, HEIGHT, title, LEFT, HEIGHT // 2, title)
        return Chart(empty, None)
    xs, ys = [x for x, _ in kept], [y for _, y in kept]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range or (min(ys + ([reference] if reference is not None else [])),
                         max(ys + ([reference] if reference is not None else [])))
    # One point, or a line too flat for its two axis labels to differ ("0.693 / 0.693"): ±5% of the value (at
    # least ±0.05) around it, the points in the middle rather than on an edge.
    if y_range is None and _nice(y0) == _nice(y1):
        middle, half = (y0 + y1) / 2, 0.05 * max(abs(y0), abs(y1), 1.0)
        y0, y1 = middle - half, middle + half
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 1, x1 + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x0) / (x1 - x0) * plot_w, 1)

    def py(y: float) -> float:
        return round(TOP + (1 - (y - y0) / (y1 - y0)) * plot_h, 1)

    polyline = " ".join(f"{px(x)},{py(y)}" for x, y in kept)
    dots = format_html_join("", '<circle cx="{}" cy="{}" r="2.2"><title>step {}: {}</title></circle>',
                            ((px(x), py(y), int(x), _nice(y)) for x, y in kept[-200:]))
    ref = ""
    if reference is not None and y0 <= reference <= y1:
        ref = format_html('<line class="chart-ref" x1="{}" x2="{}" y1="{}" y2="{}"/>', LEFT, WIDTH - RIGHT,
                          py(reference), py(reference))
    svg = format_html(
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{title}, last value {last}">'
        '<rect class="chart-frame" x="{l}" y="{t}" width="{pw}" height="{ph}"/>{ref}'
        '<polyline class="chart-line" points="{points}"/>{dots}'
        '<text class="chart-axis" x="{lx}" y="{ty}" text-anchor="end">{ymax}</text>'
        '<text class="chart-axis" x="{lx}" y="{by}" text-anchor="end">{ymin}</text>'
        '<text class="chart-axis" x="{l}" y="{xy}">step {xmin}</text>'
        '<text class="chart-axis" x="{rx}" y="{xy}" text-anchor="end">step {xmax}</text>'
        '<text class="chart-title" x="{cx}" y="{xy}" text-anchor="middle">{title}</text></svg>',
        w=WIDTH, h=HEIGHT, title=title, last=_nice(ys[-1]), l=LEFT, t=TOP, pw=plot_w, ph=plot_h, ref=ref,
        points=mark_safe(polyline), dots=dots, lx=LEFT - 4, ty=TOP + 8, by=TOP + plot_h, ymax=_nice(y1),
        ymin=_nice(y0), xy=HEIGHT - 8, xmin=int(x0), xmax=int(x1), rx=WIDTH - RIGHT, cx=LEFT + plot_w // 2,
    )
    return Chart(svg, ys[-1])
