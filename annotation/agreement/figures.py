"""How far the judges and the experts can be trusted: the figures behind the agreement dashboard.

Plain functions: ``gather`` reads the labels of one campaign (or of everything) in a handful of queries,
the other functions compute figures from what it gathered with ``annotation.stats``.

Decisions, each shown on the dashboard too:
- Agreement uses each expert's *first* choice, made before any judge verdict was revealed, so that a
  reveal-after-vote campaign measures the expert and not the judge's influence. Votes from campaigns that
  show the judge alongside are left out of judge–expert agreement altogether (the expert saw the answer).
- A judge's label on a comparison is its verdict combined over both presentation orders: a verdict that
  flips with the order ("inconsistent") counts as a tie; invalid output is left out. A judge asked one order
  only (imported, or set to judge one order) gives that order's verdict: it counts, its comparisons are
  counted as one-order, and its flip rate is "not measured" where it has no comparison judged both ways.
- "Without ties" leaves out items where either side said tie (on the four-way labels) or neither (on the
  collapsed a / b / neither labels).
- Which profile of a pair is "a" is an accident of storage, so κ, α and the confusion matrix count every item
  in both orientations (a and b swapped in the copy): flipping any subset of pairs changes none of them.
- Votes and verdicts on a pair with a profile stored as invalid are kept but left out of every figure here,
  and counted so the page can say so. Pairs of two profiles in one ranking group (two candidates of one
  generator, two variants of one model) say nothing about the group and are counted, not ranked.
- Tournament matches imported as votes are votes; the preferences a tree implies are never votes, and count
  only in rankings that ask for them (``implied=True``), which then say so.
- The judge behaviour figures (flip rate, first-position bias, invalid rate) and the judge rankings are
  accumulated from one streamed, grouped query: memory stays flat however many verdicts there are.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import krippendorff
import numpy as np
from django.db.models import Exists, F, OuterRef, Q

from .. import stats
from ..models import (
    Campaign, Comparison, Generator, Judge, JudgeDisplay, JudgeOrders, JudgeVerdict, SupersededVote,
    TournamentPreference, Vote,
)
from ..judging.rankings import ELO_K, GeneratorRank, rank_generators
from ..judging.figures import JudgeTally, score, tally_verdict
from ..judging.verdicts import INCONSISTENT, INVALID

FOUR_WAY = ["a", "b", "tie", "both_bad"]
COLLAPSED = ["a", "b", "neither"]
LABEL_NAMES = {"a": "A", "b": "B", "tie": "Tie", "both_bad": "Both bad", "neither": "Neither",
               INCONSISTENT: "Inconsistent", INVALID: "Invalid"}
# 1000 resamples give stable 95% percentile intervals; rankings refit a model per resample, so fewer.
N_BOOT = 1000
RANKING_BOOT = 200
# Bradley–Terry is refitted per resample: beyond this many judge matches, a proportional sample is used.
MAX_RANKING_MATCHES = 20_000
STREAM_CHUNK = 5_000


@dataclass(frozen=True)
class Scope:
    """One campaign's labels, or everything (campaign None); optionally only comparisons with a vote."""

    campaign: Campaign | None = None
    voted_only: bool = False

    def comparisons(self):
        if self.campaign is None:
            return Comparison.objects.all()
        return Comparison.objects.filter(campaign_items__campaign=self.campaign,
                                         campaign_items__withdrawn_at__isnull=True)

    def votes(self):
        """The current answers that count: superseded ones are another table, withdrawn items' left out."""
        votes = Vote.objects.counted()
        return votes if self.campaign is None else votes.in_campaign(self.campaign)

    def superseded(self) -> int:
        """Answers replaced by an undo or a revision: kept, never counted."""
        superseded = SupersededVote.objects.all()
        return superseded.count() if self.campaign is None else superseded.filter(campaign=self.campaign).count()

    def withdrawn(self) -> int:
        """Current votes on items withdrawn from their campaign: kept, never counted."""
        votes = Vote.objects.all() if self.campaign is None else Vote.objects.in_campaign(self.campaign)
        return votes.exclude(pk__in=Vote.objects.counted().values("pk")).count()

    def verdicts(self):
        verdicts = JudgeVerdict.objects.all()
        if self.campaign is not None:
            verdicts = verdicts.filter(comparison__campaign_items__campaign=self.campaign)
        if self.voted_only:
            verdicts = verdicts.filter(Exists(self.votes().filter(comparison=OuterRef("comparison"))))
        return verdicts


@dataclass(frozen=True)
class VoteRow:
    vote_id: int
    comparison_id: int
    expert: str
    choice: str
    first_choice: str
    revised: bool
    seconds: float | None
    gold: str
    campaign_judge_id: int | None
    judge_display: str

    @property
    def saw_judge_first(self) -> bool:
        return self.judge_display == JudgeDisplay.ALONGSIDE


@dataclass(frozen=True)
class ComparisonInfo:
    sample: str
    generator_a: str
    generator_b: str
    profile_a_id: int
    profile_b_id: int
    valid: bool = True  # both profiles valid: otherwise kept out of every figure
    attributes_a: dict = field(default_factory=dict)  # generator attributes, for grouped rankings
    attributes_b: dict = field(default_factory=dict)

    def group_a(self, group_by: str | None) -> str:
        return group_of(self.generator_a, self.attributes_a, group_by)

    def group_b(self, group_by: str | None) -> str:
        return group_of(self.generator_b, self.attributes_b, group_by)


def group_of(generator: str, attributes: dict, group_by: str | None) -> str:
    """The ranking group of a generator: its name, or its value of the attribute (``(no <key>)`` without one)."""
    if not group_by:
        return generator
    return attributes.get(group_by, f"(no {group_by})")


@dataclass
class Labels:
    scope: Scope
    votes: list[VoteRow]
    comparisons: dict[int, ComparisonInfo]
    judges: dict[int, JudgeTally]
    # judge id → comparison id → combined label, for the valid comparisons in ``comparisons`` only.
    judge_labels: dict[int, dict[int, str]]
    # Votes on pairs with an invalid profile: stored, left out of ``votes`` and of every figure.
    votes_on_invalid: int = 0
    # Answers kept but not counted: replaced by an undo or a revision, or on a withdrawn item.
    superseded: int = 0
    withdrawn: int = 0

    def group_keys(self) -> list[str]:
        """The attribute names the generators in scope carry: what rankings can be grouped by."""
        return sorted({key for info in self.comparisons.values() for key in (*info.attributes_a, *info.attributes_b)})

    def default_judge_id(self) -> int | None:
        campaign = self.scope.campaign
        if campaign is not None and campaign.judge_id in self.judges:
            return campaign.judge_id
        if not self.judges:
            return None
        return max(self.judges, key=lambda j: (len(self.judge_labels.get(j, {})), self.judges[j].verdicts))


# --- gathering ---------------------------------------------------------------------------------------


def gather(campaign: Campaign | None = None, voted_only: bool = False) -> Labels:
    """All labels in scope: votes and comparison details in memory, verdicts streamed and tallied.

    The per-comparison table covers a campaign's comparisons, or (overall) every comparison with a vote.
    ``voted_only`` reads only the verdicts on comparisons with a vote: enough for judge–expert agreement,
    and cheap however many comparisons were judged (the export tallies the rest as it streams).
    """
    scope = Scope(campaign, voted_only)
    comparisons = _comparison_infos(scope)
    votes = [v for v in _votes(scope) if comparisons.get(v.comparison_id, _VALID).valid]
    valid = {cid for cid, info in comparisons.items() if info.valid}
    judges, judge_labels = _tally_verdicts(scope, valid)
    votes_on_invalid = scope.votes().filter(
        Q(comparison__profile_a__is_valid=False) | Q(comparison__profile_b__is_valid=False)).count()
    return Labels(scope, votes, comparisons, judges, judge_labels, votes_on_invalid, scope.superseded(),
                  scope.withdrawn())


_VALID = ComparisonInfo("", "", "", 0, 0)


def _votes(scope: Scope) -> list[VoteRow]:
    item = "assignment__item__"
    fields = ["id", "comparison_id", "expert__username", "choice", "first_choice", "revised_after_reveal",
              "seconds_spent", f"{item}gold_answer", f"{item}campaign__judge_id", f"{item}campaign__judge_display"]
    return [VoteRow(*row) for row in scope.votes().order_by("comparison_id", "id").values_list(*fields)]


def _comparison_infos(scope: Scope) -> dict[int, ComparisonInfo]:
    queryset = scope.comparisons()
    if scope.campaign is None or scope.voted_only:
        queryset = queryset.filter(Exists(scope.votes().filter(comparison=OuterRef("pk"))))
    fields = ["id", "sample__name", "profile_a__generator__name", "profile_b__generator__name",
              "profile_a_id", "profile_b_id", "profile_a__is_valid", "profile_b__is_valid",
              "profile_a__generator__attributes", "profile_b__generator__attributes"]
    return {cid: ComparisonInfo(sample, gen_a, gen_b, a, b, valid_a and valid_b, attrs_a or {}, attrs_b or {})
            for cid, sample, gen_a, gen_b, a, b, valid_a, valid_b, attrs_a, attrs_b
            in queryset.order_by("id").values_list(*fields)}


def verdict_pairs(queryset) -> Iterator[tuple]:
    """(comparison id, judge id, ab label, ba label, verdicts, invalid, generator a id, generator b id, valid).

    One row per judge and comparison, streamed; a label is None where that order is missing or invalid; valid:
    both profiles of the comparison are.
    """
    grouped = (
        queryset.per_pair()
        .annotate(generator_a=F("comparison__profile_a__generator_id"),
                  generator_b=F("comparison__profile_b__generator_id"),
                  valid_a=F("comparison__profile_a__is_valid"),
                  valid_b=F("comparison__profile_b__is_valid"))
        .values_list("comparison_id", "judge_id", "ab", "ba", "answered", "invalid", "generator_a", "generator_b",
                     "valid_a", "valid_b")
    )
    return grouped.iterator(chunk_size=STREAM_CHUNK)


def _tally_verdicts(scope: Scope, kept: set[int]) -> tuple[dict[int, JudgeTally], dict[int, dict[int, str]]]:
    names = {pk: (name, orders == JudgeOrders.NONE)
             for pk, name, orders in Judge.objects.values_list("id", "name", "orders")}
    tallies: dict[int, JudgeTally] = {}
    labels: dict[int, dict[int, str]] = defaultdict(dict)
    for comparison_id, judge_id, ab, ba, n, n_invalid, gen_a, gen_b, valid_a, valid_b in verdict_pairs(
            scope.verdicts()):
        tally = tallies.get(judge_id) or tallies.setdefault(judge_id, JudgeTally(*names[judge_id]))
        valid = valid_a and valid_b
        tally.on_invalid += not valid
        combined = tally_verdict(tally, ab, ba, n, n_invalid, (gen_a, gen_b) if valid else None)
        if comparison_id in kept:
            labels[judge_id][comparison_id] = combined
    ordered = dict(sorted(tallies.items(), key=lambda item: item[1].name))
    return ordered, dict(labels)


# --- labels ------------------------------------------------------------------------------------------


def judge_label(combined: str | None) -> str | None:
    """A combined judge verdict as a four-way label: inconsistent counts as tie, invalid is no label."""
    if combined in (None, INVALID):
        return None
    return "tie" if combined == INCONSISTENT else combined


def expert_majority(choices: Sequence[str]) -> str | None:
    """The label more than half of the experts chose, or None (no votes, or split)."""
    if not choices:
        return None
    label, count = Counter(choices).most_common(1)[0]
    return label if count > len(choices) / 2 else None


# --- judge vs experts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """Agreement of two label sequences, four-way and collapsed, with and without ties."""

    n: int
    raw: float
    raw_without_ties: float
    n_without_ties: int
    kappa: stats.Estimate
    collapsed_raw: float
    collapsed_raw_without_ties: float
    collapsed_n_without_ties: int
    collapsed_kappa: stats.Estimate
    confusion: stats.Confusion

    def confusion_rows(self) -> list[tuple[str, list[int]]]:
        return [(LABEL_NAMES[label], row) for label, row in zip(self.confusion.labels, self.confusion.matrix)]


def mirrored(labels: Iterable[str]) -> list[str]:
    """The labels with a and b swapped: what they would be had the pair been stored the other way round."""
    return [_MIRROR.get(label, label) for label in labels]


_MIRROR = {"a": "b", "b": "a"}


def agreement(x: Sequence[str], y: Sequence[str], n_boot: int = N_BOOT) -> Agreement:
    """x and y: four-way labels of the same items (x: experts, the confusion matrix's rows).

    The confusion matrix counts each item in both orientations (its labels, and a and b swapped), like κ:
    so it sums to twice the items, and says nothing about which profile happened to be stored first.
    """
    cx, cy = [stats.collapse(v) for v in x], [stats.collapse(v) for v in y]
    return Agreement(
        n=len(x),
        raw=stats.raw_agreement(x, y),
        raw_without_ties=stats.raw_agreement(x, y, drop={"tie"}),
        n_without_ties=sum("tie" not in pair for pair in zip(x, y)),
        kappa=_kappa(x, y, FOUR_WAY, n_boot),
        collapsed_raw=stats.raw_agreement(cx, cy),
        collapsed_raw_without_ties=stats.raw_agreement(cx, cy, drop={"neither"}),
        collapsed_n_without_ties=sum("neither" not in pair for pair in zip(cx, cy)),
        collapsed_kappa=_kappa(cx, cy, COLLAPSED, n_boot),
        confusion=stats.confusion(list(x) + mirrored(x), list(y) + mirrored(y), FOUR_WAY),
    )


def _kappa(x: Sequence[str], y: Sequence[str], labels: list[str], n_boot: int) -> stats.Estimate:
    """Cohen's κ (scikit-learn) over the items in both orientations, so that it does not depend on which profile
    of each pair is a: flipping any subset of items changes nothing. (Plain κ does: a flipped item moves its
    count between the a and b marginals, and chance agreement with them.) The interval resamples items, each
    with its mirror."""
    value = stats.cohen_kappa(list(x) + mirrored(x), list(y) + mirrored(y), labels=labels)
    low, high = kappa_interval(folded(stats.confusion(x, y, labels).matrix), n_boot, symmetric=True)
    return stats.Estimate(value, low, high)


def _mirror_index(size: int) -> list[int]:
    """Label indexes with a (0) and b (1) swapped: FOUR_WAY and COLLAPSED both start with a, b."""
    return [1, 0, *range(2, size)]


def folded(matrix: Sequence[Sequence[int]]) -> np.ndarray:
    """A confusion matrix with each item moved to one canonical orientation: the count of a cell and of its
    mirror cell (a and b swapped on both sides) lands on whichever of the two comes first. Resampling the folded
    matrix draws the same items whichever way each pair was stored."""
    table = np.asarray(matrix, dtype=float)
    mirror = _mirror_index(len(table))
    result = np.zeros_like(table)
    for i in range(len(table)):
        for j in range(len(table)):
            ci, cj = min((i, j), (mirror[i], mirror[j]))
            result[ci, cj] += table[i, j]
    return result


# --- fast bootstrap intervals ------------------------------------------------------------------------
# The same percentile bootstrap over items as stats.bootstrap_ci (tests/test_agreement.py checks they agree),
# drawn in one go with numpy: calling scikit-learn per resample spends its time checking its input, too slow
# for every κ on the dashboard. Resampling items with replacement is exactly a multinomial draw of the confusion
# matrix (and of the units' label counts for α), so the resamples are drawn that way; replicates where the
# statistic is undefined are left out, as in stats.


def kappa_interval(matrix: Sequence[Sequence[int]], n_boot: int = N_BOOT, seed: int = 0,
                   alpha: float = 0.05, symmetric: bool = False) -> tuple[float, float]:
    """Percentile bootstrap interval of Cohen's κ from a confusion matrix; (NaN, NaN) when undefined.

    ``symmetric``: each resampled item also counts in its mirror orientation (give a ``folded`` matrix).
    """
    table = np.asarray(matrix, dtype=float)
    n = int(table.sum())
    if n == 0 or n_boot <= 0:
        return math.nan, math.nan
    draws = np.random.default_rng(seed).multinomial(n, table.ravel() / n, size=n_boot).reshape(n_boot, *table.shape)
    if symmetric:
        mirror = _mirror_index(len(table))
        draws = draws + draws[:, mirror][:, :, mirror]
        n *= 2
    observed = np.trace(draws, axis1=1, axis2=2) / n
    expected = (draws.sum(axis=2) * draws.sum(axis=1)).sum(axis=1) / n**2
    with np.errstate(divide="ignore", invalid="ignore"):
        return _percentiles((observed - expected) / (1 - expected), alpha)


def alpha_estimate(units: Sequence[Sequence[str]], labels: list[str], n_boot: int = N_BOOT, seed: int = 0,
                   alpha: float = 0.05) -> stats.Estimate:
    """Krippendorff's α (nominal) over units that each hold two or more labels, with a bootstrap over units.

    Each unit counts in both orientations (a and b swapped in its mirror), like κ, so α does not depend on which
    profile of a pair is a; the bootstrap resamples units, each with its mirror. (``labels`` start with a, b.)
    """
    counts = np.array([[unit.count(label) for label in labels] for unit in units], dtype=float).reshape(-1, len(labels))
    if len(counts) == 0:
        return _undefined()
    mirror = _mirror_index(len(labels))
    # One canonical orientation per unit first, so that resampling draws the same units however they were stored.
    counts = np.array([max(tuple(row), tuple(row[mirror])) for row in counts])

    def both_ways(rows: np.ndarray) -> float:
        return _alpha_from_counts(np.vstack([rows, rows[:, mirror]]))

    value = both_ways(counts)
    rng = np.random.default_rng(seed)
    replicates = np.array([both_ways(counts[rng.integers(0, len(counts), len(counts))]) for _ in range(n_boot)])
    return stats.Estimate(value, *_percentiles(replicates, alpha))


def _alpha_from_counts(counts: np.ndarray) -> float:
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # undefined α comes back as NaN, as we want
            return float(krippendorff.alpha(value_counts=counts, level_of_measurement="nominal"))
    except ValueError:  # one label only: no chance agreement to beat
        return math.nan


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def judge_expert_pairs(labels: Labels, judge_id: int) -> tuple[list[str], list[str], int]:
    """(expert labels, judge labels, votes left out because the judge was shown alongside)."""
    verdicts = labels.judge_labels.get(judge_id, {})
    experts, judge, alongside = [], [], 0
    for vote in labels.votes:
        label = judge_label(verdicts.get(vote.comparison_id))
        if label is None:
            continue
        if vote.saw_judge_first:
            alongside += 1
            continue
        experts.append(vote.first_choice)
        judge.append(label)
    return experts, judge, alongside


def judge_vs_experts(labels: Labels, judge_id: int, n_boot: int = N_BOOT) -> Agreement:
    experts, judge, _ = judge_expert_pairs(labels, judge_id)
    return agreement(experts, judge, n_boot)


def judge_kappas(labels: Labels, n_boot: int = 0) -> dict[int, stats.Estimate]:
    """Each judge's collapsed κ against the experts (what judge-calibrated exports select on)."""
    result = {}
    for judge_id in labels.judges:
        experts, judge, _ = judge_expert_pairs(labels, judge_id)
        cx, cy = [stats.collapse(v) for v in experts], [stats.collapse(v) for v in judge]
        result[judge_id] = _kappa(cx, cy, COLLAPSED, n_boot) if n_boot else stats.Estimate(
            stats.cohen_kappa(cx, cy, labels=COLLAPSED), math.nan, math.nan)
    return result


# --- expert vs expert --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairKappa:
    expert_x: str
    expert_y: str
    n: int
    raw: float
    kappa: stats.Estimate


@dataclass(frozen=True)
class ExpertAgreement:
    units: int  # comparisons with two or more votes
    experts: int
    alpha: stats.Estimate
    collapsed_alpha: stats.Estimate
    pairs: list[PairKappa]


def votes_by_comparison(votes: Iterable[VoteRow]) -> dict[int, list[VoteRow]]:
    grouped: dict[int, list[VoteRow]] = defaultdict(list)
    for vote in votes:
        grouped[vote.comparison_id].append(vote)
    return grouped


def expert_vs_expert(labels: Labels, n_boot: int = N_BOOT) -> ExpertAgreement:
    shared = {cid: vs for cid, vs in votes_by_comparison(labels.votes).items() if len(vs) >= 2}
    units = [[v.first_choice for v in votes] for votes in shared.values()]
    return ExpertAgreement(
        units=len(shared),
        experts=len({v.expert for vs in shared.values() for v in vs}),
        alpha=alpha_estimate(units, FOUR_WAY, n_boot),
        collapsed_alpha=alpha_estimate([[stats.collapse(v) for v in unit] for unit in units], COLLAPSED, n_boot),
        pairs=_pairwise_kappas(shared, n_boot),
    )


def _pairwise_kappas(shared: dict[int, list[VoteRow]], n_boot: int) -> list[PairKappa]:
    pairs: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for votes in shared.values():
        for vx, vy in itertools.combinations(sorted(votes, key=lambda v: v.expert), 2):
            xs, ys = pairs[(vx.expert, vy.expert)]
            xs.append(vx.first_choice)
            ys.append(vy.first_choice)
    return [
        PairKappa(ex, ey, len(xs), stats.raw_agreement(xs, ys), _kappa(xs, ys, FOUR_WAY, n_boot))
        for (ex, ey), (xs, ys) in sorted(pairs.items())
    ]


def _undefined() -> stats.Estimate:
    return stats.Estimate(math.nan, math.nan, math.nan)


# --- per judge, per expert ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    count: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.count / self.n if self.n else math.nan


def rate(count: int, n: int) -> Rate:
    low, high = stats.wilson_interval(count, n)
    return Rate(count, n, low, high)


@dataclass(frozen=True)
class JudgeBehaviour:
    judge_id: int
    name: str
    comparisons: int
    verdicts: int
    flip_rate: Rate  # among comparisons with both orders valid (n = 0: not measured)
    one_order: int  # comparisons it judged in one order only
    orderless: bool  # a scoring judge: flips and first position do not apply
    first_position: Rate  # among decisive verdicts; 0.5 means no position bias
    invalid_rate: Rate  # among all verdicts
    agreement: Agreement | None  # against the experts' independent votes; None without overlap


def judge_behaviour(labels: Labels, n_boot: int = N_BOOT) -> list[JudgeBehaviour]:
    rows = []
    for judge_id, tally in labels.judges.items():
        experts, judge, _ = judge_expert_pairs(labels, judge_id)
        rows.append(JudgeBehaviour(
            judge_id=judge_id,
            name=tally.name,
            comparisons=tally.comparisons,
            verdicts=tally.verdicts,
            flip_rate=rate(tally.flips, tally.both_orders_valid),
            one_order=tally.one_order,
            orderless=tally.orderless,
            first_position=rate(tally.first_position, tally.decisive),
            invalid_rate=rate(tally.invalid, tally.verdicts),
            agreement=agreement(experts, judge, n_boot) if experts else None,
        ))
    return rows


@dataclass(frozen=True)
class RevealChanges:
    shown: int  # votes where the judge was revealed after the vote
    changed: int
    towards_judge: int
    away_from_judge: int

    @property
    def elsewhere(self) -> int:
        return self.changed - self.towards_judge - self.away_from_judge


@dataclass(frozen=True)
class ExpertFigures:
    expert: str
    votes: int
    with_experts: Rate  # agreeing pairs among all pairs with another expert's vote, four-way
    with_judge: Rate  # four-way agreement with the selected judge (independent votes only)
    median_seconds: float | None
    gold: Rate
    reveal: RevealChanges


def expert_figures(labels: Labels, judge_id: int | None) -> list[ExpertFigures]:
    verdicts = labels.judge_labels.get(judge_id, {}) if judge_id is not None else {}
    by_comparison = votes_by_comparison(labels.votes)
    by_expert: dict[str, list[VoteRow]] = defaultdict(list)
    for vote in labels.votes:
        by_expert[vote.expert].append(vote)
    return [_one_expert(name, votes, by_comparison, verdicts, labels) for name, votes in sorted(by_expert.items())]


def _one_expert(name: str, votes: list[VoteRow], by_comparison: dict[int, list[VoteRow]],
                verdicts: dict[int, str], labels: Labels) -> ExpertFigures:
    peers = [(v, other) for v in votes for other in by_comparison[v.comparison_id] if other.expert != name]
    judged = [(v, judge_label(verdicts.get(v.comparison_id))) for v in votes if not v.saw_judge_first]
    judged = [(v, label) for v, label in judged if label is not None]
    seconds = [v.seconds for v in votes if v.seconds is not None]
    gold = [v for v in votes if v.gold]
    return ExpertFigures(
        expert=name,
        votes=len(votes),
        with_experts=rate(sum(v.first_choice == o.first_choice for v, o in peers), len(peers)),
        with_judge=rate(sum(v.first_choice == label for v, label in judged), len(judged)),
        median_seconds=statistics.median(seconds) if seconds else None,
        gold=rate(sum(v.first_choice == v.gold for v in gold), len(gold)),
        reveal=_reveal_changes(votes, labels),
    )


def _reveal_changes(votes: list[VoteRow], labels: Labels) -> RevealChanges:
    """Towards whom a revealed verdict moved the expert: the label shown is the campaign judge's."""
    shown = [v for v in votes if v.judge_display == JudgeDisplay.REVEAL]
    changed = [v for v in shown if v.revised and v.choice != v.first_choice]
    towards = away = 0
    for vote in changed:
        shown_label = judge_label(labels.judge_labels.get(vote.campaign_judge_id, {}).get(vote.comparison_id))
        towards += shown_label is not None and vote.choice == shown_label
        away += shown_label is not None and vote.first_choice == shown_label
    return RevealChanges(len(shown), len(changed), towards, away)


# --- rankings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankingRow:
    generator: str  # the group: a generator's name, or an attribute's value
    experts: GeneratorRank | None
    judge: GeneratorRank | None


@dataclass(frozen=True)
class MatchSet:
    """The matches one ranking is fitted on, and what was left out of it (each shown with the ranking)."""

    matches: list[stats.Match]
    same_group: int = 0  # pairs of two profiles of one group: counted, not ranked
    both_bad: int = 0
    implied: int = 0  # tournament preferences among ``matches`` (only when asked for)
    total: int = 0  # all the matches, when ``matches`` is a proportional sample of them


@dataclass(frozen=True)
class Rankings:
    rows: list[RankingRow]
    expert_matches: int
    judge_matches: int
    judge_matches_used: int
    spearman: float
    kendall: float
    group_by: str | None = None
    experts: MatchSet = MatchSet([])
    judge: MatchSet = MatchSet([])
    votes_on_invalid: int = 0


def oriented(x: str, y: str, points: float) -> stats.Match:
    """A match written with its players in name order: the same match whichever profile was stored as a, so
    order-dependent ratings (Elo) do not depend on storage either."""
    return (x, y, points) if x <= y else (y, x, 1 - points)


def expert_matches(labels: Labels, group_by: str | None = None, implied: bool = False) -> MatchSet:
    """Expert votes as matches between groups (generators, or values of the attribute ``group_by``).

    "Both bad" says nothing about which is better and pairs within one group say nothing about the group: both
    are counted and left out. ``implied`` adds the preferences the experts' imported tournaments imply (the
    winner of a match over everyone its loser had beaten), marked as such in the counts.
    """
    matches, same, both_bad = [], 0, 0
    for vote in labels.votes:
        info = labels.comparisons.get(vote.comparison_id)
        if info is None:
            continue
        x, y = info.group_a(group_by), info.group_b(group_by)
        if x == y:
            same += 1
        elif vote.first_choice == "both_bad":
            both_bad += 1
        else:
            matches.append(oriented(x, y, score(vote.first_choice)))
    implied_matches, implied_same = _implied_matches(labels, group_by) if implied else ([], 0)
    return MatchSet(matches + implied_matches, same + implied_same, both_bad, len(implied_matches),
                    len(matches) + len(implied_matches))


def _implied_matches(labels: Labels, group_by: str | None) -> tuple[list[stats.Match], int]:
    preferences = TournamentPreference.objects.filter(implied=True, tournament__expert__isnull=False,
                                                      chosen__is_valid=True, rejected__is_valid=True)
    if labels.scope.campaign is not None:
        preferences = preferences.filter(tournament__campaign=labels.scope.campaign)
    rows = preferences.order_by("id").values_list("chosen__generator__name", "chosen__generator__attributes",
                                                  "rejected__generator__name", "rejected__generator__attributes")
    matches, same = [], 0
    for chosen, chosen_attributes, rejected, rejected_attributes in rows:
        x, y = group_of(chosen, chosen_attributes or {}, group_by), group_of(rejected, rejected_attributes or {}, group_by)
        if x == y:
            same += 1
        else:
            matches.append(oriented(x, y, 1.0))
    return matches, same


def judge_matches(labels: Labels, judge_id: int | None, group_by: str | None = None,
                  limit: int = MAX_RANKING_MATCHES) -> MatchSet:
    """The judge's matches between groups (a proportional sample when over ``limit``), in name order."""
    if judge_id not in labels.judges:
        return MatchSet([])
    counts = labels.judges[judge_id].matches
    generators = {pk: (name, attributes or {}) for pk, name, attributes in Generator.objects.filter(
        id__in={g for key in counts for g in key[:2]}).values_list("id", "name", "attributes")}
    grouped: Counter = Counter()
    same = 0
    for (gen_x, gen_y, points), count in counts.items():
        x, y = group_of(*generators[gen_x], group_by), group_of(*generators[gen_y], group_by)
        if x == y:
            same += count
        else:
            grouped[oriented(x, y, points)] += count
    total = sum(grouped.values())
    scale = min(1.0, limit / total) if total else 1.0
    matches = []
    for match, count in sorted(grouped.items()):
        matches += [match] * max(1, round(count * scale))
    return MatchSet(matches, same, total=total)


def same_group_text(count: int, group_by: str | None) -> str:
    """ "26 pairs compare two variants of one model" (or two candidates of one generator)."""
    pairs = f"{count} pair{'s' if count != 1 else ''} compare{'s' if count == 1 else ''}"
    return f"{pairs} two variants of one {group_by}" if group_by else f"{pairs} two candidates of one generator"


def counted_text(matches: MatchSet, what: str, group_by: str | None, on_invalid: int = 0) -> str:
    """What a ranking counts and leaves out, in words, to print beside it."""
    direct = len(matches.matches) - matches.implied
    text = f"{direct} {what}{'s' if direct != 1 else ''}"
    if matches.implied:
        text += f" and {matches.implied} implied tournament preference{'s' if matches.implied != 1 else ''}"
    if matches.total > len(matches.matches):
        text += f" (a proportional sample of {matches.total})"
    left_out = []
    if matches.same_group:
        left_out.append(same_group_text(matches.same_group, group_by))
    if matches.both_bad:
        left_out.append(f"{matches.both_bad} both bad")
    if on_invalid:
        left_out.append(f"{on_invalid} vote{'s' if on_invalid != 1 else ''} on a pair with an invalid profile")
    return text + ("; left out: " + ", ".join(left_out) if left_out else "")


RANKING_CSV_HEADER = ["source", "group_by", "group", "bradley_terry", "bt_low", "bt_high", "elo", "elo_low",
                      "elo_high", "score", "matches"]


def ranking_dict(rank: GeneratorRank) -> dict:
    bt, elo = rank.bradley_terry, rank.elo
    return {"group": rank.name, "bradley_terry": _plain(bt.value), "bt_low": _plain(bt.low), "bt_high": _plain(bt.high),
            "elo": _plain(elo.value), "elo_low": _plain(elo.low), "elo_high": _plain(elo.high), "score": rank.wins,
            "matches": rank.matches}


def ranking_csv_rows(ranks: Iterable[GeneratorRank], source: str, group_by: str | None) -> Iterator[list]:
    for rank in ranks:
        row = ranking_dict(rank)
        yield [source, group_by or "generator", *(("" if row[k] is None else row[k]) for k in RANKING_CSV_HEADER[2:])]


def _plain(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def rankings(labels: Labels, judge_id: int | None, n_boot: int = RANKING_BOOT, group_by: str | None = None,
             implied: bool = False, k: float = ELO_K) -> Rankings:
    """Bradley–Terry and Elo (``judging.rankings.rank_generators``) from the experts' votes and from the judge,
    by generator or by the generators' attribute ``group_by``."""
    by_experts = expert_matches(labels, group_by, implied)
    by_judge = judge_matches(labels, judge_id, group_by)
    experts = {r.name: r for r in rank_generators(by_experts.matches, k=k, n_boot=n_boot)}
    judge = {r.name: r for r in rank_generators(by_judge.matches, k=k, n_boot=n_boot)}
    generators = sorted(set(experts) | set(judge),
                        key=lambda g: (-(experts.get(g) or judge[g]).bradley_terry.value, g))
    points = ({g: r.bradley_terry.value for g, r in experts.items()},
              {g: r.bradley_terry.value for g, r in judge.items()})
    return Rankings(
        rows=[RankingRow(g, experts.get(g), judge.get(g)) for g in generators],
        expert_matches=len(by_experts.matches),
        judge_matches=by_judge.total,
        judge_matches_used=len(by_judge.matches),
        spearman=stats.spearman(*points),
        kendall=stats.kendall(*points),
        group_by=group_by,
        experts=by_experts,
        judge=by_judge,
        votes_on_invalid=labels.votes_on_invalid,
    )


# --- the per-comparison table ------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonRow:
    comparison_id: int
    info: ComparisonInfo
    votes: list[VoteRow]
    expert_majority: str | None
    judge_verdicts: list[tuple[str, str]]  # (judge name, combined label)
    judge: str | None  # the selected judge's four-way label
    agrees: bool | None  # expert majority vs selected judge, collapsed; None when either is missing

    @property
    def gold(self) -> str:
        return next((v.gold for v in self.votes if v.gold), "")


def comparison_rows(labels: Labels, judge_id: int | None) -> list[ComparisonRow]:
    """One row per comparison in scope, disagreements first (they are what an admin wants to read)."""
    by_comparison = votes_by_comparison(labels.votes)
    rows = []
    for cid, info in labels.comparisons.items():
        votes = by_comparison.get(cid, [])
        majority = expert_majority([v.first_choice for v in votes])
        judge = judge_label(labels.judge_labels.get(judge_id, {}).get(cid)) if judge_id is not None else None
        agrees = None if majority is None or judge is None else stats.collapse(majority) == stats.collapse(judge)
        verdicts = [(tally.name, labels.judge_labels[j][cid]) for j, tally in labels.judges.items()
                    if cid in labels.judge_labels.get(j, {})]
        rows.append(ComparisonRow(cid, info, votes, majority, verdicts, judge, agrees))
    rows.sort(key=lambda r: ({False: 0, None: 1, True: 2}[r.agrees], r.comparison_id))
    return rows


CSV_HEADER = ["comparison_id", "sample", "generator_a", "generator_b", "profile_a_id", "profile_b_id", "votes",
              "expert_majority", "judge", "judge_label", "agrees", "gold", "all_judges"]


def csv_rows(rows: Iterable[ComparisonRow], judge_name: str) -> Iterator[list]:
    yield CSV_HEADER
    for row in rows:
        votes = "; ".join(f"{v.expert}={v.first_choice}" + (f"->{v.choice}" if v.choice != v.first_choice else "")
                          for v in row.votes)
        verdicts = "; ".join(f"{name}={label}" for name, label in row.judge_verdicts)
        yield [row.comparison_id, row.info.sample, row.info.generator_a, row.info.generator_b, row.info.profile_a_id,
               row.info.profile_b_id, votes, row.expert_majority or "", judge_name, row.judge or "",
               "" if row.agrees is None else str(row.agrees).lower(), row.gold, verdicts]


# --- everything at once ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    labels: Labels
    judge_id: int | None
    judge_name: str
    judge_agreement: Agreement | None
    alongside_left_out: int
    experts: ExpertAgreement
    judges: list[JudgeBehaviour]
    per_expert: list[ExpertFigures]
    rankings: Rankings


def summary(campaign: Campaign | None = None, judge_id: int | None = None, n_boot: int = N_BOOT,
            ranking_boot: int = RANKING_BOOT, group_by: str | None = None, implied: bool = False) -> Summary:
    labels = gather(campaign)
    if judge_id not in labels.judges:
        judge_id = labels.default_judge_id()
    judges = judge_behaviour(labels, n_boot)
    selected = next((j for j in judges if j.judge_id == judge_id), None)
    return Summary(
        labels=labels,
        judge_id=judge_id,
        judge_name=selected.name if selected else "",
        judge_agreement=selected.agreement if selected else None,
        alongside_left_out=judge_expert_pairs(labels, judge_id)[2] if judge_id is not None else 0,
        experts=expert_vs_expert(labels, n_boot),
        judges=judges,
        per_expert=expert_figures(labels, judge_id),
        rankings=rankings(labels, judge_id, ranking_boot, group_by, implied),
    )
