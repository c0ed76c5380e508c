"""How each judge behaves over all its verdicts: invalid output, order flips, first-position bias, tokens, cost."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Avg, Count, F, OuterRef, Q, QuerySet, Subquery, Sum

from ..models import Judge, JudgeVerdict


def with_figures(judges: QuerySet) -> QuerySet:
    """Annotate judges with their verdict figures in the same query (admin list and detail).

    Order flips are counted on comparisons with both orders valid: a correlated subquery pairs each "ab"
    verdict with its "ba" partner, and canonical labels that differ are a flip.
    """
    partner = JudgeVerdict.objects.filter(comparison=OuterRef("comparison"), judge=OuterRef("judge"), order="ba",
                                          is_valid=True).values("preferred")[:1]
    pairs = (JudgeVerdict.objects.filter(judge=OuterRef("pk"), order="ab", is_valid=True)
             .annotate(partner=Subquery(partner)).filter(partner__isnull=False).order_by().values("judge"))
    first_shown = Q(verdicts__order="ab", verdicts__preferred="a") | Q(verdicts__order="ba", verdicts__preferred="b")
    return judges.annotate(
        n_verdicts=Count("verdicts"),
        n_invalid=Count("verdicts", filter=Q(verdicts__is_valid=False)),
        n_decisive=Count("verdicts", filter=Q(verdicts__preferred__in=["a", "b"])),
        n_first=Count("verdicts", filter=first_shown),
        prompt_tokens=Sum("verdicts__prompt_tokens"),
        completion_tokens=Sum("verdicts__completion_tokens"),
        mean_latency_ms=Avg("verdicts__latency_ms"),
        total_cost=Sum("verdicts__cost_usd"),
        n_pairs=Subquery(pairs.annotate(n=Count("pk")).values("n")),
        n_flips=Subquery(pairs.annotate(n=Count("pk", filter=~Q(partner=F("preferred")))).values("n")),
    )


@dataclass(frozen=True)
class JudgeFigures:
    verdicts: int
    invalid: int
    pairs: int  # comparisons with both orders valid
    flips: int
    decisive: int  # valid verdicts naming a profile (not tie)
    first: int  # of those, naming the profile shown first
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float | None
    cost_usd: Decimal

    @classmethod
    def of(cls, judge: Judge) -> "JudgeFigures":
        """From a judge annotated by ``with_figures``."""
        return cls(judge.n_verdicts, judge.n_invalid, judge.n_pairs or 0, judge.n_flips or 0, judge.n_decisive,
                   judge.n_first, judge.prompt_tokens or 0, judge.completion_tokens or 0, judge.mean_latency_ms,
                   judge.total_cost or Decimal(0))

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


def judge_figures(judge: Judge) -> JudgeFigures:
    return JudgeFigures.of(with_figures(Judge.objects.filter(pk=judge.pk)).get())
