"""Staff pages outside the admin's model pages: the agreement dashboard, its CSV, and export downloads.

The plots are SVG drawn on the server from numbers computed here: no JavaScript and nothing fetched from
elsewhere. Every label in them (judge, expert, generator names) goes through template autoescaping.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.contrib import admin
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from ..models import Campaign, DatasetExport
from ..roles import staff_permission_required

# agreement and stats pull in numpy, scipy and scikit-learn: the URLconf imports this module in every
# web process, so the views below import them when a staff member opens the dashboard.
if TYPE_CHECKING:
    from . import figures as agreement
    from ..stats import Estimate

TABLE_ROWS = 50  # per-comparison rows shown on the page; the CSV has them all
BLUE, ORANGE, GREEN, PURPLE = "#0072B2", "#D55E00", "#009E73", "#7B3294"  # colour-blind safe


# --- views -------------------------------------------------------------------------------------------


@staff_permission_required("annotation.view_agreement")
@require_GET
def agreement_dashboard(request: HttpRequest) -> HttpResponse:
    from . import figures as agreement

    campaign = _campaign_from(request)
    group_by, implied = request.GET.get("group_by") or None, request.GET.get("implied") == "1"
    summary = agreement.summary(campaign, judge_id=_int(request.GET.get("judge")), group_by=group_by,
                                implied=implied)
    rows = agreement.comparison_rows(summary.labels, summary.judge_id)
    ranked = summary.rankings
    context = {
        **admin.site.each_context(request),
        "is_nav_sidebar_enabled": False,  # the page needs the width
        "title": f"Agreement · {campaign.name if campaign else 'all campaigns'}",
        "campaign": campaign,
        "campaigns": Campaign.objects.order_by("name").only("id", "name"),
        "s": summary,
        "judge_table": [_judge_row(j) for j in summary.judges],
        "headline": _headline(summary.judge_agreement),
        "selected_one_order": next((j.one_order for j in summary.judges if j.judge_id == summary.judge_id), 0),
        "expert_rows": [_expert_row(e) for e in summary.per_expert],
        "pair_rows": [_pair_row(p) for p in summary.experts.pairs],
        "ranking_rows": [_ranking_row(r) for r in ranked.rows],
        "group_keys": summary.labels.group_keys(),
        "group_by": group_by or "",
        "implied": implied,
        "experts_counted": agreement.counted_text(ranked.experts, "expert vote", group_by, ranked.votes_on_invalid),
        "judge_counted": agreement.counted_text(ranked.judge, "judge verdict", group_by),
        "table": rows[:TABLE_ROWS],
        "table_total": len(rows),
        "kappa_plot": kappa_plot(summary.judges),
        "bias_plot": bias_plot(summary.judges),
        "ranking_plot": ranking_plot(summary.rankings, summary.judge_name),
        "heatmap": heatmap(summary.judge_agreement.confusion) if summary.judge_agreement else None,
        "fmt": {
            "alpha": _estimate(summary.experts.alpha), "alpha_collapsed": _estimate(summary.experts.collapsed_alpha),
            "spearman": _num(summary.rankings.spearman), "kendall": _num(summary.rankings.kendall),
        },
    }
    return render(request, "annotation/dashboard/agreement.html", context)


class _Echo:
    def write(self, value: str) -> str:
        return value


@staff_permission_required("annotation.view_agreement")
@require_GET
def agreement_csv(request: HttpRequest) -> StreamingHttpResponse:
    from . import figures as agreement

    campaign = _campaign_from(request)
    labels = agreement.gather(campaign)
    judge_id = _int(request.GET.get("judge"))
    judge_id = judge_id if judge_id in labels.judges else labels.default_judge_id()
    judge_name = labels.judges[judge_id].name if judge_id is not None else ""
    writer = csv.writer(_Echo())
    lines = (writer.writerow([_csv_safe(v) for v in row])
             for row in agreement.csv_rows(agreement.comparison_rows(labels, judge_id), judge_name))
    name = f"agreement-{campaign.pk if campaign else 'all'}.csv"
    return StreamingHttpResponse(lines, content_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})


@staff_permission_required("annotation.view_agreement")
@require_GET
def rankings_csv(request: HttpRequest) -> HttpResponse:
    """The dashboard's rankings (experts and the selected judge), grouped as on the page, as CSV."""
    from . import figures as agreement

    campaign = _campaign_from(request)
    group_by, implied = request.GET.get("group_by") or None, request.GET.get("implied") == "1"
    labels = agreement.gather(campaign)
    judge_id = _int(request.GET.get("judge"))
    judge_id = judge_id if judge_id in labels.judges else labels.default_judge_id()
    ranked = agreement.rankings(labels, judge_id, group_by=group_by, implied=implied)
    judge_name = labels.judges[judge_id].name if judge_id is not None else ""
    response = HttpResponse(content_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="rankings-{campaign.pk if campaign else "all"}.csv"'})
    writer = csv.writer(response)
    writer.writerow(agreement.RANKING_CSV_HEADER)
    for source, pick in (("experts", lambda r: r.experts), (f"judge {judge_name}", lambda r: r.judge)):
        ranks = sorted((pick(r) for r in ranked.rows if pick(r) is not None), key=lambda r: -r.bradley_terry.value)
        writer.writerows([_csv_safe(v) for v in row] for row in agreement.ranking_csv_rows(ranks, source, group_by))
    return response


@staff_permission_required("annotation.download_datasetexport")
@require_GET
def export_file(request: HttpRequest, pk: int, name: str) -> FileResponse:
    """One file of a finished snapshot; only names the snapshot's manifest lists are served."""
    from ..export.dataset import snapshot_file

    export = get_object_or_404(DatasetExport, pk=pk)
    path = snapshot_file(export, name)
    if path is None:
        raise Http404("no such file in this snapshot")
    return FileResponse(path.open("rb"), as_attachment=True, filename=f"{export.pk}-{path.name}")


def _campaign_from(request: HttpRequest) -> Campaign | None:
    campaign_id = _int(request.GET.get("campaign"))
    return get_object_or_404(Campaign, pk=campaign_id) if campaign_id else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _csv_safe(value) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas; names come from imports, so defuse them."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# --- numbers as text ---------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _estimate(estimate: Estimate | None) -> str:
    if estimate is None or math.isnan(estimate.value):
        return "–"
    if math.isnan(estimate.low):
        return _num(estimate.value)
    return f"{estimate.value:.2f} [{estimate.low:.2f}, {estimate.high:.2f}]"


def _rate(rate: agreement.Rate) -> dict | None:
    """A share as {value, ci, n} for the _rate.html snippet; None when there is nothing to count."""
    if not rate.n:
        return None
    return {"value": f"{100 * rate.value:.0f}%", "ci": f"{100 * rate.low:.0f}–{100 * rate.high:.0f}", "n": rate.n}


def _headline(result: agreement.Agreement | None) -> dict | None:
    if result is None:
        return None
    return {
        "n": result.n, "raw": _num(result.raw), "raw_without_ties": _num(result.raw_without_ties),
        "n_without_ties": result.n_without_ties, "kappa": _estimate(result.kappa),
        "collapsed_raw": _num(result.collapsed_raw),
        "collapsed_raw_without_ties": _num(result.collapsed_raw_without_ties),
        "collapsed_n_without_ties": result.collapsed_n_without_ties,
        "collapsed_kappa": _estimate(result.collapsed_kappa),
    }


def _judge_row(judge: agreement.JudgeBehaviour) -> dict:
    result = judge.agreement
    return {
        "id": judge.judge_id, "name": judge.name, "comparisons": judge.comparisons, "verdicts": judge.verdicts,
        "one_order": judge.one_order,
        "orderless": judge.orderless,
        "flip": _rate(judge.flip_rate), "first": _rate(judge.first_position), "invalid": _rate(judge.invalid_rate),
        "n": result.n if result else 0, "raw": _num(result.raw) if result else "–",
        "kappa": _estimate(result.kappa) if result else "–",
        "collapsed_kappa": _estimate(result.collapsed_kappa) if result else "–",
    }


def _expert_row(expert: agreement.ExpertFigures) -> dict:
    reveal = expert.reveal
    return {
        "name": expert.expert, "votes": expert.votes, "with_experts": _rate(expert.with_experts),
        "with_judge": _rate(expert.with_judge), "seconds": _num(expert.median_seconds, 0), "gold": _rate(expert.gold),
        "reveal": reveal,
    }


def _pair_row(pair: agreement.PairKappa) -> dict:
    return {"x": pair.expert_x, "y": pair.expert_y, "n": pair.n, "raw": _num(pair.raw), "kappa": _estimate(pair.kappa)}


def _ranking_row(row: agreement.RankingRow) -> dict:
    def elo(rank) -> str:
        if rank is None:
            return "–"
        return f"{rank.elo.value:.0f} [{rank.elo.low:.0f}, {rank.elo.high:.0f}]"

    return {"generator": row.generator,
            "experts": _estimate(row.experts.bradley_terry if row.experts else None), "experts_elo": elo(row.experts),
            "judge": _estimate(row.judge.bradley_terry if row.judge else None), "judge_elo": elo(row.judge)}


# --- SVG plots ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    x: float
    x1: float
    x2: float
    dy: float
    color: str
    title: str  # tooltip text


@dataclass(frozen=True)
class PlotRow:
    y: float
    label: str
    marks: list[Mark]


@dataclass
class IntervalPlot:
    """Dots with whiskers on a horizontal axis, one row per item, one mark per series."""

    title: str
    lo: float
    hi: float
    rows: list[PlotRow] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    refs: list[tuple[float, str]] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    width: int = 580
    left: int = 170
    right: int = 20
    top: int = 34
    row_height: int = 30

    @property
    def height(self) -> int:
        return self.top + self.row_height * max(1, len(self.rows)) + 36

    @property
    def axis_y(self) -> int:
        return self.top + self.row_height * max(1, len(self.rows)) + 4

    def x(self, value: float) -> float:
        span = self.width - self.left - self.right
        clipped = min(max(value, self.lo), self.hi)
        return round(self.left + span * (clipped - self.lo) / (self.hi - self.lo), 1)


@dataclass(frozen=True)
class Series:
    name: str
    color: str


def interval_plot(title: str, items: list[tuple[str, list[Estimate | None]]], series: list[Series],
                  lo: float, hi: float, step: float, refs: list[tuple[float, str]] = (),
                  percent: bool = False) -> IntervalPlot:
    plot = IntervalPlot(title, lo, hi, legend=[(s.color, s.name) for s in series])
    offsets = _offsets(len(series))
    for index, (label, estimates) in enumerate(items):
        y = plot.top + plot.row_height * index + plot.row_height / 2
        marks = [_mark(plot, estimate, s, dy, percent) for estimate, s, dy in zip(estimates, series, offsets)]
        plot.rows.append(PlotRow(y, label, [m for m in marks if m is not None]))
    count = round((hi - lo) / step)
    plot.ticks = [(plot.x(lo + i * step), _tick(lo + i * step, percent)) for i in range(count + 1)]
    plot.refs = [(plot.x(value), text) for value, text in refs]
    return plot


def _offsets(n: int) -> list[float]:
    gap = 7
    return [(i - (n - 1) / 2) * gap for i in range(n)]


def _mark(plot: IntervalPlot, estimate: Estimate | None, series: Series, dy: float, percent: bool) -> Mark | None:
    if estimate is None or math.isnan(estimate.value):
        return None
    low = estimate.value if math.isnan(estimate.low) else estimate.low
    high = estimate.value if math.isnan(estimate.high) else estimate.high
    scale = 100 if percent else 1
    unit = "%" if percent else ""
    title = f"{series.name}: {scale * estimate.value:.2f}{unit} (95% CI {scale * low:.2f}–{scale * high:.2f}{unit})"
    return Mark(plot.x(estimate.value), plot.x(low), plot.x(high), dy, series.color, title)


def _tick(value: float, percent: bool) -> str:
    return f"{100 * value:.0f}%" if percent else f"{value:g}"


def _rate_estimate(rate: agreement.Rate) -> Estimate | None:
    from ..stats import Estimate

    return Estimate(rate.value, rate.low, rate.high) if rate.n else None


def kappa_plot(judges: list[agreement.JudgeBehaviour]) -> IntervalPlot | None:
    items = [(j.name, [j.agreement.collapsed_kappa, j.agreement.kappa]) for j in judges if j.agreement]
    if not items:
        return None
    lows = [e.low for _, estimates in items for e in estimates if not math.isnan(e.low)]
    lo = min([-0.2] + [math.floor(v * 5) / 5 for v in lows])
    series = [Series("κ, a / b / neither", BLUE), Series("κ, four-way", PURPLE)]
    refs = [(0.0, "chance"), (0.6, "0.6")]
    return interval_plot("Judge–expert agreement (Cohen's κ, 95% CI)", items, series, max(lo, -1.0), 1.0, 0.2, refs)


def bias_plot(judges: list[agreement.JudgeBehaviour]) -> IntervalPlot | None:
    if not judges:
        return None
    items = [(j.name, [_rate_estimate(j.first_position), _rate_estimate(j.flip_rate), _rate_estimate(j.invalid_rate)])
             for j in judges]
    series = [Series("picks the profile shown first", ORANGE), Series("flips with the order", BLUE),
              Series("invalid output", GREEN)]
    return interval_plot("Judge behaviour (share, 95% CI)", items, series, 0.0, 1.0, 0.25,
                         [(0.5, "no position bias")], percent=True)


def ranking_plot(rankings: agreement.Rankings, judge_name: str) -> IntervalPlot | None:
    if not rankings.rows:
        return None
    estimates = [(r.generator, [rank.bradley_terry if rank else None for rank in (r.experts, r.judge)])
                 for r in rankings.rows]
    items = estimates
    bounds = [v for _, pair in estimates for e in pair if e for v in (e.low, e.high, e.value) if not math.isnan(v)]
    widest = max(abs(v) for v in bounds) if bounds else 1.0
    # Ticks land on round numbers either side of 0: halves up to ±2, whole numbers beyond.
    edge = max(1.0, math.ceil(widest * 2) / 2) if widest <= 2 else float(math.ceil(widest))
    series = [Series("experts", BLUE), Series(f"judge {judge_name}" if judge_name else "judge", ORANGE)]
    step = 0.5 if edge <= 2 else 1.0
    return interval_plot("Generator strength (Bradley–Terry log-strength, 95% CI)", items, series, -edge, edge, step,
                         [(0.0, "average")])


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    count: int
    share: float
    fill: str
    ink: str  # text colour readable on the fill
    size: int

    @property
    def centre(self) -> tuple[int, int]:
        return self.x + self.size // 2, self.y + self.size // 2 + 5

    @property
    def percent(self) -> int:
        return round(100 * self.share)


@dataclass
class Heatmap:
    row_labels: list[tuple[int, str]]
    col_labels: list[tuple[int, str]]
    cells: list[Cell]
    size: int
    left: int
    top: int

    @property
    def width(self) -> int:
        return self.left + self.size * len(self.col_labels) + 10

    @property
    def height(self) -> int:
        return self.top + self.size * len(self.row_labels) + 10


def heatmap(confusion, size: int = 70, left: int = 110, top: int = 60) -> Heatmap:
    """Expert labels (rows) × judge labels (columns); the shade is the share of the row, the number the count."""
    from .figures import LABEL_NAMES

    names = [LABEL_NAMES[label] for label in confusion.labels]
    cells = []
    for i, row in enumerate(confusion.matrix):
        total = sum(row)
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            cells.append(Cell(left + j * size, top + i * size, count, share, _shade(share),
                              "#fff" if share > 0.55 else "#1d1f21", size))
    rows = [(top + i * size + size // 2, name) for i, name in enumerate(names)]
    cols = [(left + j * size + size // 2, name) for j, name in enumerate(names)]
    return Heatmap(rows, cols, cells, size, left, top)


def _shade(share: float) -> str:
    """White → blue by share."""
    r, g, b = (int(255 + (c - 255) * share) for c in (0x00, 0x72, 0xB2))
    return f"#{r:02x}{g:02x}{b:02x}"
