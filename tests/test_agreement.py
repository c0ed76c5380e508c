"""Agreement figures through the database path, on small examples worked out by hand."""

import math

import pytest

from annotation.agreement import figures as agreement
from tests.labels_factory import World

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    return World()


@pytest.fixture
def judged(world, alice):
    """Six comparisons, alice's votes against judge J's verdicts (ab, ba) in canonical terms.

    alice: a a b b tie both_bad;  J: a a b a b inconsistent(→tie);  plus one comparison J answered invalidly.
    """
    judge = world.judge("J")
    campaign = world.campaign("c", judge=judge)
    plan = [("a", "a", "a"), ("a", "a", "a"), ("b", "b", "b"), ("b", "a", "a"), ("tie", "b", "b"),
            ("both_bad", "a", "b")]
    for choice, ab, ba in plan:
        comparison = world.comparison()
        world.verdicts(comparison, judge, ab, ba)
        world.vote(campaign, comparison, alice, choice)
    broken = world.comparison()
    world.verdicts(broken, judge, "a", None)
    world.vote(campaign, broken, alice, "a")
    return campaign, judge


def test_it_computes_raw_agreement_with_and_without_ties(judged):
    campaign, judge = judged
    result = agreement.judge_vs_experts(agreement.gather(campaign), judge.id, n_boot=50)
    assert result.n == 6  # the invalid verdict is not a label
    assert result.raw == pytest.approx(3 / 6)
    # Without ties: items 5 (expert tie) and 6 (judge flip → tie) are left out; 3 of 4 agree.
    assert (result.raw_without_ties, result.n_without_ties) == (pytest.approx(3 / 4), 4)
    # Collapsed: both_bad and the flip are both "neither", so item 6 now agrees.
    assert result.collapsed_raw == pytest.approx(4 / 6)
    assert result.collapsed_raw_without_ties == pytest.approx(3 / 4)


def test_it_computes_cohens_kappa_by_hand(judged):
    campaign, judge = judged
    result = agreement.judge_vs_experts(agreement.gather(campaign), judge.id, n_boot=200)
    # Four-way, each item also mirrored (12 items): p_o = 6/12; experts a 4, b 4, tie 2, both bad 2; judge a 5,
    # b 5, tie 2 → p_e = (20 + 20 + 4) / 144 = 11/36; κ = (18 − 11) / (36 − 11) = 7/25.
    assert result.kappa.value == pytest.approx(7 / 25)
    # Collapsed: p_o = 8/12; experts a 4, b 4, neither 4; judge a 5, b 5, neither 2 → p_e = 48/144; κ = 1/2.
    assert result.collapsed_kappa.value == pytest.approx(1 / 2)
    assert result.kappa.low < result.kappa.value < result.kappa.high


def test_it_builds_the_confusion_matrix_experts_by_judge(judged):
    campaign, judge = judged
    result = agreement.judge_vs_experts(agreement.gather(campaign), judge.id, n_boot=10)
    assert result.confusion.labels == ["a", "b", "tie", "both_bad"]
    # Each item counted as stored and mirrored (a and b swapped on both sides), like κ: 12 entries for 6 items.
    assert result.confusion.matrix == [
        [3, 1, 0, 0],  # expert a: judge a twice as stored, once mirrored (item 3); judge b once mirrored (item 4)
        [1, 3, 0, 0],  # expert b: the mirror of the row above
        [1, 1, 0, 0],  # expert tie: judge b as stored (item 5), a mirrored
        [0, 0, 2, 0],  # expert both bad: judge flipped (tie), both ways
    ]


def test_it_measures_the_judges_flips_position_bias_and_invalid_output(judged):
    campaign, judge = judged
    (row,) = agreement.judge_behaviour(agreement.gather(campaign), n_boot=10)
    assert (row.flip_rate.count, row.flip_rate.n) == (1, 6)  # only item 6 flipped; item 7 lacks a valid order
    # Decisive verdicts naming the profile shown first: one per pair for items 1–5, both for 6, one for 7.
    assert (row.first_position.count, row.first_position.n) == (8, 13)
    assert (row.invalid_rate.count, row.invalid_rate.n) == (1, 14)
    assert row.flip_rate.low < 1 / 6 < row.flip_rate.high


def test_it_computes_krippendorffs_alpha_and_pairwise_kappa_between_experts(world, alice, bob, charlie):
    campaign = world.campaign("c")
    # alice: a a b b, bob: a b b b on the same four comparisons; charlie votes alone elsewhere.
    for mine, theirs in [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b")]:
        comparison = world.comparison()
        world.vote(campaign, comparison, alice, mine)
        world.vote(campaign, comparison, bob, theirs)
    world.vote(campaign, world.comparison(), charlie, "tie")
    result = agreement.expert_vs_expert(agreement.gather(campaign), n_boot=200)
    # Each unit also mirrored (a ↔ b), so α does not depend on which profile is a. Coincidences: aa 6, ab 2,
    # ba 2, bb 6 (n = 16; n_a = n_b = 8): α = 1 − (4/16) / (2·8·8 / (16·15)) = 1 − 60/128 = 17/32.
    assert (result.units, result.experts) == (4, 2)
    assert result.alpha.value == pytest.approx(17 / 32)
    (pair,) = result.pairs
    # Both orientations: p_o = 6/8, each label 4 of 8 for both → p_e = 1/2 → κ = 1/2.
    assert (pair.expert_x, pair.expert_y, pair.n) == ("alice", "bob", 4)
    assert pair.kappa.value == pytest.approx(0.5) and pair.raw == pytest.approx(0.75)


def test_it_uses_the_first_choice_and_reports_changes_after_the_reveal(world, alice, bob):
    judge = world.judge("J")
    campaign = world.campaign("reveal", judge=judge, display="reveal")
    # (first choice, judge, final choice): towards the judge, away from it, unchanged, elsewhere.
    moves = [("a", "b", "b"), ("a", "a", "b"), ("a", "a", "a"), ("tie", "b", "a")]
    for first, judged_as, final in moves:
        comparison = world.comparison()
        world.verdicts(comparison, judge, judged_as, judged_as)
        world.vote(campaign, comparison, alice, final, first_choice=first, seconds=10 * len(first))
    labels = agreement.gather(campaign)
    (figures,) = agreement.expert_figures(labels, judge.id)
    assert figures.reveal.shown == 4 and figures.reveal.changed == 3
    assert (figures.reveal.towards_judge, figures.reveal.away_from_judge, figures.reveal.elsewhere) == (1, 1, 1)
    # Agreement with the judge counts the first choices: the second and third agree.
    assert (figures.with_judge.count, figures.with_judge.n) == (2, 4)
    assert figures.median_seconds == 10


def test_it_scores_experts_on_gold_items(world, alice):
    campaign = world.campaign("gold")
    world.vote(campaign, world.comparison(), alice, "a", gold="a")
    world.vote(campaign, world.comparison(), alice, "b", gold="a")
    world.vote(campaign, world.comparison(), alice, "tie")
    (figures,) = agreement.expert_figures(agreement.gather(campaign), None)
    assert (figures.gold.count, figures.gold.n) == (1, 2)
    assert math.isnan(figures.with_experts.value)  # nobody else voted on these


def test_it_leaves_out_votes_made_with_the_judge_alongside(world, alice):
    judge = world.judge("J")
    campaign = world.campaign("alongside", judge=judge, display="alongside")
    comparison = world.comparison()
    world.verdicts(comparison, judge, "a", "a")
    world.vote(campaign, comparison, alice, "a")
    summary = agreement.summary(campaign, n_boot=10, ranking_boot=10)
    assert summary.judge_agreement is None and summary.alongside_left_out == 1


def test_it_ranks_generators_from_experts_and_from_the_judge(world, alice):
    judge = world.judge("J")
    campaign = world.campaign("rank", judge=judge)
    # strong beats medium beats weak, for the experts and the judge alike.
    for winner, loser in [("strong", "medium"), ("medium", "weak"), ("strong", "weak")] * 3:
        comparison = world.comparison(generator_a=winner, generator_b=loser)
        world.verdicts(comparison, judge, "a", "a")
        world.vote(campaign, comparison, alice, "a")
    result = agreement.rankings(agreement.gather(campaign), judge.id, n_boot=30)
    assert [row.generator for row in result.rows] == ["strong", "medium", "weak"]
    assert result.spearman == pytest.approx(1.0) and result.kendall == pytest.approx(1.0)
    strong = result.rows[0].experts.bradley_terry
    assert strong.low <= strong.value <= strong.high
    assert (result.expert_matches, result.judge_matches) == (9, 9)


def test_it_gathers_in_a_few_queries_however_many_votes(world, alice, bob, django_assert_max_num_queries):
    judge = world.judge("J")
    campaign = world.campaign("c", judge=judge)
    for _ in range(20):
        comparison = world.comparison()
        world.verdicts(comparison, judge, "a", "b")
        world.vote(campaign, comparison, alice, "a")
        world.vote(campaign, comparison, bob, "b")
    # Two of them count what is kept but not counted: superseded answers, votes on withdrawn items.
    with django_assert_max_num_queries(8):
        labels = agreement.gather(campaign)
    assert len(labels.votes) == 40 and len(labels.comparisons) == 20


def test_the_table_puts_disagreements_first_and_exports_csv(judged):
    campaign, judge = judged
    labels = agreement.gather(campaign)
    rows = agreement.comparison_rows(labels, judge.id)
    assert [r.agrees for r in rows][:2] == [False, False] and rows[-1].agrees is True
    csv = list(agreement.csv_rows(rows, "J"))
    assert csv[0] == agreement.CSV_HEADER and len(csv) == 1 + 7


def test_the_fast_intervals_match_the_library_bootstrap():
    import random

    from annotation import stats

    rng = random.Random(3)
    x = [rng.choice("ab") if rng.random() < 0.8 else "tie" for _ in range(150)]
    y = [v if rng.random() < 0.7 else rng.choice(["a", "b", "tie", "both_bad"]) for v in x]
    slow = stats.bootstrap_ci(lambda a, b: stats.cohen_kappa(a, b, labels=agreement.FOUR_WAY), x, y, n_boot=400)
    fast = agreement.kappa_interval(stats.confusion(x, y, agreement.FOUR_WAY).matrix, n_boot=2000)
    assert fast == pytest.approx(slow, abs=0.03)
    # α: alice and bob on 60 units; the library's α and interval against ours.
    units = [[u, u if rng.random() < 0.75 else rng.choice("ab")] for u in (rng.choice("ab") for _ in range(60))]
    # Ours counts each unit also mirrored (a ↔ b): the library's α on the units and their mirrors, resampling
    # units each with its mirror.
    def library_alpha(sample):
        both = list(sample) + [agreement.mirrored(u) for u in sample]
        return stats.krippendorff_alpha([[u[0] for u in both], [u[1] for u in both]])

    library = stats.Estimate(library_alpha(units), *stats.bootstrap_ci(library_alpha, units, n_boot=400))
    ours = agreement.alpha_estimate(units, ["a", "b"], n_boot=2000)
    assert ours.value == pytest.approx(library.value)
    assert (ours.low, ours.high) == pytest.approx((library.low, library.high), abs=0.05)
