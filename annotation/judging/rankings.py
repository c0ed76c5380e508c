"""Generators ranked by what a judge (or a panel) decided: Elo and Bradley–Terry with bootstrap intervals."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db.models import F, QuerySet

from .. import stats
from ..models import Comparison, Judge, JudgePanel, JudgeVerdict
from .figures import score
from .panels import panel_verdicts
from .verdicts import INVALID, NO_CONSENSUS, combine_asked

ELO_K = 16


def judge_matches(judge: Judge, comparisons: QuerySet | Iterable[int]) -> list[stats.Match]:
    """The judge's combined verdicts as generator matches (generator x, generator y, score of x).

    Score 1 / 0 when both orders agree on a or b (or the one order asked says so); 0.5 for a tie or an order flip
    ("no better one"); invalid comparisons and pairs of one generator are left out. In comparison id order,
    which Elo depends on. One query.
    """
    matches = []
    pairs = JudgeVerdict.objects.filter(judge=judge, comparison__in=comparisons).per_pair().annotate(
        gen_a=F("comparison__profile_a__generator__name"), gen_b=F("comparison__profile_b__generator__name"))
    for row in pairs.order_by("comparison_id"):
        combined = combine_asked(row["ab"], row["ba"], row["answered"])
        if combined != INVALID and row["gen_a"] != row["gen_b"]:
            matches.append((row["gen_a"], row["gen_b"], score(combined)))
    return matches


def panel_matches(panel: JudgePanel, comparisons: QuerySet | Iterable[int]) -> list[stats.Match]:
    """Like ``judge_matches`` from the panel's consensus; "no consensus" is left out."""
    ids = list(comparisons.values_list("pk", flat=True)) if isinstance(comparisons, QuerySet) else list(comparisons)
    verdicts = panel_verdicts(panel, ids)
    names = {c: (ga, gb) for c, ga, gb in Comparison.objects.filter(pk__in=ids).order_by("pk").values_list(
        "pk", "profile_a__generator__name", "profile_b__generator__name")}
    return [(ga, gb, score(verdicts[c])) for c, (ga, gb) in names.items()
            if verdicts[c] != NO_CONSENSUS and ga != gb]


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
    for x, y, points in matches:
        wins[x] += points
        wins[y] += 1 - points
        played[x] += 1
        played[y] += 1
    ranks = [GeneratorRank(name, elo[name], bt[name], wins[name], played[name]) for name in bt]
    return sorted(ranks, key=lambda r: -r.bradley_terry.value)


