"""Each judge panel's verdict on comparisons: a consensus over its judges' verdicts, each combined over both
orders."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet

from ..models import Comparison, JudgePanel, JudgeVerdict
from .verdicts import INVALID, panel_consensus


def panel_verdicts(panel: JudgePanel, comparisons: QuerySet | Iterable[int]) -> dict[int, str]:
    """Each comparison's panel verdict: panel_consensus over each panel judge's combined verdict.

    A judge that has not judged a comparison (or answered invalidly) casts no vote; no votes → "no_consensus".
    """
    judge_ids = [j.pk for j in panel.judges.all()]
    ids = list(comparisons.values_list("pk", flat=True)) if isinstance(comparisons, QuerySet) else list(comparisons)
    combined = JudgeVerdict.objects.filter(comparison__in=ids, judge__in=judge_ids).combined()
    return {c: panel_consensus([combined.get((c, j), INVALID) for j in judge_ids], panel.threshold) for c in ids}


def panel_verdict(panel: JudgePanel, comparison: Comparison) -> str:
    return panel_verdicts(panel, [comparison.pk])[comparison.pk]


