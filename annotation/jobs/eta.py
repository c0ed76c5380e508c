"""How fast work goes and when it ends, from its recent progress: the one estimate every live page shows."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Progress points kept per row, and so the intervals the rate is taken over: enough to average out noisy
# steps, few enough that a real change of pace shows within a few updates.
WINDOW = 12
# The ETA's interval: 95%, from the spread of the recent intervals' time per item.
Z95 = 1.96


@dataclass(frozen=True)
class Estimate:
    rate: float  # items per second over the recent window
    eta_s: float  # seconds left
    error_s: float | None  # half-width of the ETA's 95% interval; None with too few intervals to say
    intervals: int  # how many recent intervals the rate is taken over

    @property
    def per_item_s(self) -> float:
        return 1 / self.rate


def estimate(points: Sequence[Sequence[float]], total: float, now: float | None = None) -> Estimate | None:
    """The rate and time left from ``points`` — (unix time, items done) at each progress update, oldest first —
    over the last WINDOW intervals; None until two points with progress between them.

    The rate is items over time across the window (a noisy step moves it by 1/WINDOW of its noise, not all of
    it), and the error comes from how much the time per item varies between intervals. Between updates the ETA
    counts down with the clock instead of standing still.
    """
    recent = [(float(t), float(d)) for t, d, *_ in points][-(WINDOW + 1):]
    if len(recent) < 2:
        return None
    (t0, d0), (t1, d1) = recent[0], recent[-1]
    if d1 <= d0 or t1 <= t0:
        return None
    rate = (d1 - d0) / (t1 - t0)
    remaining = max(0.0, total - d1)
    since_last = max(0.0, (now if now is not None else t1) - t1)
    eta = max(0.0, remaining / rate - since_last)
    per_item = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(recent, recent[1:]) if b[1] > a[1]]
    error = None
    if len(per_item) >= 3:
        # Two parts: how well the mean time per item is known (it scales with all remaining items), and how
        # much the remaining items' own times will vary around it (independent, so it adds up in variance).
        spread = statistics.stdev(per_item)
        error = Z95 * spread * math.sqrt(remaining ** 2 / len(per_item) + remaining)
    return Estimate(rate=rate, eta_s=eta, error_s=error, intervals=len(per_item))


def add_point(points: Sequence[Sequence[float]], when: float, done: float, *also: float) -> list[list[float]]:
    """``points`` with (when, done, *also) appended, the oldest dropped beyond the window; unchanged if nothing
    moved."""
    kept = [list(p) for p in points]
    if kept and kept[-1][1] == done:
        return kept
    return (kept + [[round(when, 3), done, *also]])[-(WINDOW + 1):]


def duration(seconds: float) -> str:
    """A time left as people say it: "45 s", "3 min", "1 h 20 min"."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
