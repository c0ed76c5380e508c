"""What the judges said about comparisons: each judge's verdict combined over both orders, and each panel's.

A verdict that flips with the presentation order is "inconsistent", never a win (``verdicts.combine_canonical``);
a judge asked one order only gives that order's verdict (``verdicts.combine_asked``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.db.models import Count, Max, Q, QuerySet

from ..models import Comparison, Judge, JudgePanel, JudgeVerdict
from .verdicts import INVALID, combine_asked, panel_consensus


@dataclass(frozen=True)
class PairVerdict:
    """One judge on one comparison: canonical labels per order (None: invalid or not asked)."""

    ab: str | None
    ba: str | None
    answered: int  # stored verdicts, valid or not: 2 when both orders were asked

    @property
    def combined(self) -> str:
        return combine_asked(self.ab, self.ba, self.answered)

    @property
    def one_order(self) -> bool:
        return self.answered == 1


def pair_verdicts(verdicts: QuerySet) -> Iterator[tuple[int, int, PairVerdict]]:
    """(comparison id, judge id, PairVerdict) for the given JudgeVerdict rows; one grouped query."""
    grouped = (verdicts.order_by().values("comparison_id", "judge_id").annotate(
        ab=Max("preferred", filter=Q(order="ab", is_valid=True)),
        ba=Max("preferred", filter=Q(order="ba", is_valid=True)),
        answered=Count("id"),
    ).values_list("comparison_id", "judge_id", "ab", "ba", "answered"))
    for comparison_id, judge_id, ab, ba, answered in grouped:
        yield comparison_id, judge_id, PairVerdict(ab or None, ba or None, answered)


def combined_verdicts(comparisons: QuerySet | Iterable[int], judges: Iterable[Judge | int] | None = None
                      ) -> dict[tuple[int, int], str]:
    """(comparison id, judge id) → "a" | "b" | "tie" | "inconsistent" | "invalid"; pairs never judged are absent."""
    verdicts = JudgeVerdict.objects.filter(comparison__in=comparisons)
    if judges is not None:
        verdicts = verdicts.filter(judge__in=list(judges))
    return {(c, j): pv.combined for c, j, pv in pair_verdicts(verdicts)}


def panel_verdicts(panel: JudgePanel, comparisons: QuerySet | Iterable[int]) -> dict[int, str]:
    """Each comparison's panel verdict: panel_consensus over each panel judge's combined verdict.

    A judge that has not judged a comparison (or answered invalidly) casts no vote; no votes → "no_consensus".
    """
    judge_ids = [j.pk for j in panel.judges.all()]
    ids = list(comparisons.values_list("pk", flat=True)) if isinstance(comparisons, QuerySet) else list(comparisons)
    combined = combined_verdicts(ids, judge_ids)
    return {c: panel_consensus([combined.get((c, j), INVALID) for j in judge_ids], panel.threshold) for c in ids}


def panel_verdict(panel: JudgePanel, comparison: Comparison) -> str:
    return panel_verdicts(panel, [comparison.pk])[comparison.pk]


