"""How each judge behaves: invalid output, order flips, first-position bias, tokens and cost.

``tally_verdict`` is the one place these are counted: the admin's judge pages, the agreement dashboard and the
dataset card all add up the same per-comparison rows (``JudgeVerdict.objects.per_pair()``) with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, Sum

from ..models import Judge, JudgeVerdict
from .verdicts import INCONSISTENT, INVALID, combine_asked


@dataclass
class JudgeTally:
    """What one judge did, accumulated comparison by comparison."""

    name: str
    orderless: bool = False  # a scoring judge: no presentation order, so no flips and no position bias to count
    verdicts: int = 0
    invalid: int = 0
    comparisons: int = 0
    both_orders_valid: int = 0
    one_order: int = 0  # comparisons asked in one order only: their verdicts count, their flips are not measured
    flips: int = 0
    decisive: int = 0  # valid verdicts naming a profile (not tie)
    first_position: int = 0  # of those, naming the profile shown first
    on_invalid: int = 0  # comparisons with a profile stored as invalid: in the behaviour figures, not in κ or rankings
    # (generator x, generator y, score of x) → count, for the rankings; pairs with an invalid profile left out.
    matches: Counter = field(default_factory=Counter)


def tally_verdict(tally: JudgeTally, ab: str | None, ba: str | None, n: int, n_invalid: int,
                  generators: tuple[int, int] | None = None) -> str:
    """Count one judge's verdicts on one comparison (its canonical label per order, ``n`` verdicts stored,
    ``n_invalid`` of them invalid); returns its combined label."""
    tally.verdicts += n
    tally.invalid += n_invalid
    tally.comparisons += 1
    combined = combine_asked(ab, ba, n)
    # A scoring judge's one verdict is complete and was shown in no order: no flips, no position to count.
    if not tally.orderless:
        _tally_orders(tally, ab, ba, n, combined)
    if generators and combined != INVALID and generators[0] != generators[1]:
        tally.matches[(*generators, score(combined))] += 1
    return combined


def _tally_orders(tally: JudgeTally, ab: str | None, ba: str | None, n: int, combined: str) -> None:
    # First position: in order "ab" canonical a was shown first, in "ba" canonical b.
    for label, shown_first in ((ab, "a"), (ba, "b")):
        if label in ("a", "b"):
            tally.decisive += 1
            tally.first_position += label == shown_first
    tally.one_order += n == 1
    if ab is not None and ba is not None:
        tally.both_orders_valid += 1
        tally.flips += combined == INCONSISTENT


def score(label: str) -> float:
    """A combined verdict as the score of profile a: a tie or an order flip says "no better one"."""
    return {"a": 1.0, "b": 0.0}.get(label, 0.5)


@dataclass(frozen=True)
class JudgeFigures:
    verdicts: int
    invalid: int
    pairs: int  # comparisons with both orders valid
    flips: int
    decisive: int
    first: int
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float | None
    cost_usd: Decimal
    orderless: bool = False  # flips and first position do not apply (a scoring judge)

    @property
    def invalid_rate(self) -> float | None:
        return self.invalid / self.verdicts if self.verdicts else None

    @property
    def flip_rate(self) -> float | None:
        return self.flips / self.pairs if self.pairs else None

    @property
    def first_position_rate(self) -> float | None:
        """0.5 is no position bias."""
        return self.first / self.decisive if self.decisive else None


def judges_figures(judges: Iterable[Judge]) -> dict[int, JudgeFigures]:
    """Each judge's figures over all its verdicts, from one grouped query."""
    tallies = {judge.pk: JudgeTally(judge.name, judge.orderless) for judge in judges}
    usage = {pk: Counter() for pk in tallies}
    sums = {"prompt": Sum("prompt_tokens"), "completion": Sum("completion_tokens"), "latency": Sum("latency_ms"),
            "timed": Count("latency_ms"), "cost": Sum("cost_usd")}
    for row in JudgeVerdict.objects.filter(judge__in=list(tallies)).per_pair().annotate(**sums).iterator():
        tally_verdict(tallies[row["judge_id"]], row["ab"], row["ba"], row["answered"], row["invalid"])
        usage[row["judge_id"]].update({name: row[name] or 0 for name in sums})
    return {pk: JudgeFigures(t.verdicts, t.invalid, t.both_orders_valid, t.flips, t.decisive, t.first_position,
                             usage[pk]["prompt"], usage[pk]["completion"],
                             usage[pk]["latency"] / usage[pk]["timed"] if usage[pk]["timed"] else None,
                             Decimal(usage[pk]["cost"]), t.orderless)
            for pk, t in tallies.items()}


def judge_figures(judge: Judge) -> JudgeFigures:
    return judges_figures([judge])[judge.pk]
