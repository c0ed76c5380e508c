"""Generators ranked by what a judge (or a panel) decided: Elo and Bradley–Terry with bootstrap intervals."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db.models import Count, F, Max, Q, QuerySet

from .. import stats
from ..models import Comparison, Judge, JudgePanel, JudgeVerdict
from .combined import panel_verdicts
from .verdicts import INCONSISTENT, INVALID, combine_asked

ELO_K = 16
# A tie or an order flip says "no better one": half a point each way.
_SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5, INCONSISTENT: 0.5}


def _named_pairs(verdicts: QuerySet) -> QuerySet:
    return verdicts.order_by().values("comparison_id").annotate(
        ab=Max("preferred", filter=Q(order="ab", is_valid=True)),
        ba=Max("preferred", filter=Q(order="ba", is_valid=True)),
        asked=Count("id"),
        gen_a=F("comparison__profile_a__generator__name"),
        gen_b=F("comparison__profile_b__generator__name"),
    ).order_by("comparison_id")


def judge_matches(judge: Judge, comparisons: QuerySet | Iterable[int]) -> list[stats.Match]:
    """The judge's combined verdicts as generator matches (generator x, generator y, score of x).

    Score 1 / 0 when both orders agree on a or b (or the one order asked says so); 0.5 for a tie or an order flip
    ("no better one"); invalid comparisons and pairs of one generator are left out. In comparison id order,
    which Elo depends on. One query.
    """
    matches = []
    for row in _named_pairs(JudgeVerdict.objects.filter(judge=judge, comparison__in=comparisons)):
        combined = combine_asked(row["ab"] or None, row["ba"] or None, row["asked"])
        if combined != INVALID and row["gen_a"] != row["gen_b"]:
            matches.append((row["gen_a"], row["gen_b"], _SCORES[combined]))
    return matches


def panel_matches(panel: JudgePanel, comparisons: QuerySet | Iterable[int]) -> list[stats.Match]:
    """Like ``judge_matches`` from the panel's consensus; "no consensus" is left out."""
    ids = list(comparisons.values_list("pk", flat=True)) if isinstance(comparisons, QuerySet) else list(comparisons)
    verdicts = panel_verdicts(panel, ids)
    names = {c: (ga, gb) for c, ga, gb in Comparison.objects.filter(pk__in=ids).order_by("pk").values_list(
        "pk", "profile_a__generator__name", "profile_b__generator__name")}
    return [(ga, gb, _SCORES[verdicts[c]]) for c, (ga, gb) in names.items()
            if verdicts[c] in _SCORES and ga != gb]


@dataclass(frozen=True)
class GeneratorRank:
    name: str
    elo: stats.Estimate
    bradley_terry: stats.Estimate
    wins: float  # ties and flips count half
    matches: int


def rank_generators(matches: Sequence[stats.Match], k: float = ELO_K, n_boot: int = 1000,
                    seed: int = 0) -> list[GeneratorRank]:
    """Elo (K = ``k``) and Bradley–Terry with percentile-bootstrap 95% intervals, best first by Bradley–Terry."""
    if not matches:
        return []
    elo = stats.bootstrap_rankings(matches, lambda m: stats.elo(m, k=k), n_boot=n_boot, seed=seed)
    bt = stats.bootstrap_rankings(matches, "bradley_terry", n_boot=n_boot, seed=seed)
    wins: Counter = Counter()
    played: Counter = Counter()
    for x, y, score in matches:
        wins[x] += score
        wins[y] += 1 - score
        played[x] += 1
        played[y] += 1
    ranks = [GeneratorRank(name, elo[name], bt[name], wins[name], played[name]) for name in bt]
    return sorted(ranks, key=lambda r: -r.bradley_terry.value)


