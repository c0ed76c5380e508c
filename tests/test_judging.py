"""Judging through the database: tournaments, order flips, panels, active pairs, rankings, judge figures."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest

from annotation.judging import strategies
from annotation.judging.backends import local_outcome
from annotation.judging.panels import panel_verdict
from annotation.judging.figures import JudgeFigures, judge_figures
from annotation.judging.rankings import judge_matches, panel_matches, rank_generators
from annotation.judging.session import Session, verdict_row
from annotation.judging.strategies import select_active
from annotation.models import (
    Backend,
    Campaign,
    Comparison,
    Generator,
    JobStatus,
    Judge,
    JudgePanel,
    JudgeVerdict,
    Profile,
    TournamentPreference,
)
from tests.test_judging_server import (
    Reply,
    consistent_judge,
    first_position_judge,
    http_judge,
    judge_in_process,
    make_profiles,
    make_sample,
    quality,
    server,  # noqa: F401  (fixture)
    shown_profiles,
    verdict,
)

pytestmark = pytest.mark.django_db


# --- tournaments ---------------------------------------------------------------------------------------


@pytest.fixture
def unshuffled(monkeypatch):
    """Bracket in profile id order, so a test can check every match by hand."""
    monkeypatch.setattr(strategies, "seeded", lambda ids, sample_id: list(ids))


def preferences_by_quality(judge: Judge) -> set[tuple[int, int, bool]]:
    return {(quality(p.chosen.raw_text), quality(p.rejected.raw_text), p.implied)
            for p in TournamentPreference.objects.filter(judge=judge).select_related("chosen", "rejected")}


def test_an_eight_candidate_bracket_checked_by_hand(server, unshuffled):
    make_profiles(make_sample(), [5, 2, 7, 1, 8, 3, 6, 4])
    judge = http_judge(server)
    job = judge_in_process(judge, "tournament")
    assert job.status == JobStatus.SUCCEEDED, job.error
    # Round 1: 5>2, 7>1, 8>3, 6>4. Round 2: 7>5 (and 7 over 2, whom 5 beat), 8>6 (and 8>4).
    # Final: 8>7, and 8 over everyone 7 had beaten: 1, 5, 2. 7 matches, 12 preferences, 5 implied.
    assert preferences_by_quality(judge) == {
        (5, 2, False), (7, 1, False), (8, 3, False), (6, 4, False),
        (7, 5, False), (7, 2, True), (8, 6, False), (8, 4, True),
        (8, 7, False), (8, 1, True), (8, 5, True), (8, 2, True),
    }
    assert Comparison.objects.filter(source="tournament").count() == 7
    assert JudgeVerdict.objects.count() == 14 and (job.done, job.total) == (14, 14)
    assert "1 tournaments, 12 preferences (5 implied)" in job.message
    for preference in TournamentPreference.objects.filter(implied=False).select_related("comparison"):
        assert {preference.comparison.profile_a_id, preference.comparison.profile_b_id} == {
            preference.chosen_id, preference.rejected_id}


def test_sixteen_candidates_give_fifteen_matches_and_thirty_two_preferences(server):
    qualities = list(range(1, 17))
    random.Random(4).shuffle(qualities)
    make_profiles(make_sample(), qualities)
    judge = http_judge(server, concurrency=4)
    job = judge_in_process(judge, "tournament")
    assert job.status == JobStatus.SUCCEEDED, job.error
    found = preferences_by_quality(judge)
    assert len(found) == 32 and sum(implied for *_, implied in found) == 17
    assert len(server.requests) == 30 and Comparison.objects.count() == 15
    assert all(chosen > rejected for chosen, rejected, _ in found)  # a consistent judge: always the better one
    assert {rejected for chosen, rejected, _ in found if chosen == 16} == set(range(1, 16))


def test_several_samples_play_their_rounds_together(server):
    for name, qualities in (("one", [1, 2, 3, 4]), ("two", [3, 1, 2])):
        make_profiles(make_sample(name), qualities)
    judge = http_judge(server)
    job = judge_in_process(judge, "tournament")
    # 4 → 3 matches and 4 preferences; 3 (one bye) → 2 matches and 2 or 3 preferences.
    assert JudgeVerdict.objects.count() == 10 and job.total == 10
    counts = {s: TournamentPreference.objects.filter(sample__name=s).count() for s in ("one", "two")}
    assert counts["one"] == 4 and counts["two"] in (2, 3)


def test_a_flipped_or_invalid_match_sends_the_first_candidate_on_without_a_preference(server, unshuffled):
    def flips_on_quality_2(request):
        if 2 in map(quality, shown_profiles(request)):
            return first_position_judge(request)
        return consistent_judge(request)

    server.script = flips_on_quality_2
    make_profiles(make_sample(), [1, 2, 3, 4])
    judge = http_judge(server)
    judge_in_process(judge, "tournament")
    # (1,2) flips: 1 advances unjudged. (3,4): 4. Final (1,4): 4 > 1, and 1 beat nobody.
    assert preferences_by_quality(judge) == {(4, 3, False), (4, 1, False)}


def test_a_tournament_cut_short_by_failures_stores_nothing_and_a_rerun_finishes_it(server, unshuffled):
    broken = {"on": True}

    def final_unavailable(request):
        if broken["on"] and set(map(quality, shown_profiles(request))) == {2, 4}:
            return Reply(status=500, body="{}", headers={"retry-after-ms": "1"})
        return consistent_judge(request)

    server.script = final_unavailable
    make_profiles(make_sample(), [1, 2, 3, 4])
    judge = http_judge(server)
    job = judge_in_process(judge, "tournament")
    assert "1 incomplete" in job.message and not TournamentPreference.objects.exists()
    assert JudgeVerdict.objects.count() == 4  # round 1 is kept
    broken["on"] = False
    asked = len(server.requests)
    job = judge_in_process(judge, "tournament")
    assert len(server.requests) == asked + 2  # only the final's two orders
    assert preferences_by_quality(judge) == {(2, 1, False), (4, 3, False), (4, 2, False), (4, 1, True)}


def test_rerunning_a_tournament_replaces_its_preferences_instead_of_adding(server):
    make_profiles(make_sample(), [1, 2, 3, 4])
    judge = http_judge(server)
    judge_in_process(judge, "tournament")
    first = preferences_by_quality(judge)
    judge_in_process(judge, "tournament")
    assert preferences_by_quality(judge) == first and TournamentPreference.objects.count() == 4


def test_invalid_and_duplicate_profiles_are_never_paired(server):
    sample = make_sample()
    good = make_profiles(sample, [1, 2])
    bad = make_profiles(sample, [3])[0]
    Profile.objects.filter(pk=bad.pk).update(is_valid=False, invalid_reason="too few competencies")
    dup = make_profiles(sample, [4])[0]
    Profile.objects.filter(pk=dup.pk).update(duplicate_of=good[0])
    judge_in_process(http_judge(server), "all")
    assert list(Comparison.objects.values_list("profile_a", "profile_b")) == [(good[0].pk, good[1].pk)]


# --- storage: strict verdicts, HTML, order flips ------------------------------------------------------


@pytest.mark.parametrize(("output", "error"), [
    ("I prefer A.", "no JSON object"),
    ('{"preferred": "A"} {"preferred": "B"}', "2 JSON objects"),
    ('{"reasoning": "r", "preferred": 3}', "'preferred' must be"),
    ('{"reasoning": "truncated', "malformed or truncated"),
    ("", "empty output"),
])
def test_unparseable_answers_are_stored_as_invalid_with_raw_text_and_never_counted(server, output, error):
    server.script = lambda r: Reply(content=output)
    make_profiles(make_sample(), [1, 2])
    judge = http_judge(server)
    job = judge_in_process(judge)
    assert job.status == JobStatus.SUCCEEDED
    for v in JudgeVerdict.objects.all():
        assert not v.is_valid and v.preferred == "" and v.raw_text == output and error in v.error
    assert judge_matches(judge, Comparison.objects.all()) == []
    assert JudgeVerdict.objects.combined() == {(Comparison.objects.get().pk, judge.pk): "invalid"}
    figures = judge_figures(judge)
    assert figures.invalid_rate == 1.0 and figures.flip_rate is None and figures.first_position_rate is None


def test_html_in_the_reasoning_is_stored_verbatim_and_rendered_inert(server, client_for, admin_user):
    reasoning = '<script>alert("x")</script><img src=x onerror=alert(1)> B is better'
    server.script = lambda r: verdict("B", reasoning)
    make_profiles(make_sample(), [1, 2])
    judge_in_process(http_judge(server))
    assert set(JudgeVerdict.objects.values_list("reasoning", flat=True)) == {reasoning}
    comparison = Comparison.objects.get()
    page = client_for(admin_user).get(f"/admin/annotation/comparison/{comparison.pk}/change/").content.decode()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_a_judge_that_prefers_the_first_position_flips_on_every_comparison(server):
    server.script = first_position_judge
    make_profiles(make_sample(), [1, 2, 3])
    judge = http_judge(server)
    judge_in_process(judge)
    assert set(JudgeVerdict.objects.combined().values()) == {"inconsistent"}
    figures = judge_figures(judge)
    assert (figures.pairs, figures.flips, figures.flip_rate, figures.first_position_rate) == (3, 3, 1.0, 1.0)


def test_order_flip_accounting_on_a_judge_that_flips_on_one_comparison(server):
    def flips_on_1_vs_3(request):
        if set(map(quality, shown_profiles(request))) == {1, 3}:
            return first_position_judge(request)
        return consistent_judge(request)

    server.script = flips_on_1_vs_3
    make_profiles(make_sample(), [1, 2, 3])
    judge = http_judge(server)
    judge_in_process(judge)
    assert sorted(JudgeVerdict.objects.combined().values()) == ["b", "b", "inconsistent"]
    figures = judge_figures(judge)
    assert (figures.pairs, figures.flips) == (3, 1) and figures.flip_rate == pytest.approx(1 / 3)
    # Consistent comparisons pick the first shown in one order of two; the flipping one in both: 4 of 6.
    assert (figures.decisive, figures.first) == (6, 4)


def test_order_flips_are_counted_per_comparison_with_both_orders_valid():
    sample = make_sample()
    profiles = make_profiles(sample, [1, 2, 3, 4])
    judge = Judge.objects.create(name="j", model="m", backend=Backend.OPENAI)
    pairs = [(profiles[0], profiles[1]), (profiles[0], profiles[2]), (profiles[0], profiles[3]),
             (profiles[1], profiles[2])]
    comparisons = [Comparison.objects.create(sample=sample, profile_a=p, profile_b=q) for p, q in pairs]
    rows = [("a", "a"), ("a", "b"), ("tie", "a"), ("b", None)]  # agree, flip, flip (tie vs a), one invalid
    for comparison, (ab, ba) in zip(comparisons, rows):
        for order, label in (("ab", ab), ("ba", ba)):
            JudgeVerdict.objects.create(comparison=comparison, judge=judge, order=order, preferred=label or "",
                                        is_valid=label is not None, error="" if label else "bad")
    figures = judge_figures(judge)
    assert (figures.verdicts, figures.invalid, figures.pairs, figures.flips) == (8, 1, 3, 2)
    assert figures.flip_rate == pytest.approx(2 / 3)
    # Decisive: ab a,a,b → shown first twice (a in ab); ba a,b,a → b in ba is first once. 4 of 6.
    assert (figures.decisive, figures.first) == (6, 3)
    assert [JudgeVerdict.objects.combined()[(c.pk, judge.pk)] for c in comparisons] == [
        "a", "inconsistent", "inconsistent", "invalid"]


# --- panels --------------------------------------------------------------------------------------------


def _panel_fixture():
    sample = make_sample()
    low, high = make_profiles(sample, [1, 2])
    comparison = Comparison.objects.create(sample=sample, profile_a=low, profile_b=high)
    judges = [Judge.objects.create(name=f"j{i}", model="m") for i in range(4)]
    for judge, (ab, ba) in zip(judges, [("a", "a"), ("a", "a"), ("b", "b"), (None, "a")]):
        for order, label in (("ab", ab), ("ba", ba)):
            JudgeVerdict.objects.create(comparison=comparison, judge=judge, order=order, preferred=label or "",
                                        is_valid=label is not None, error="" if label else "bad")
    return comparison, judges


def test_a_panel_gives_consensus_or_none_by_its_threshold():
    comparison, judges = _panel_fixture()
    unanimous = JudgePanel.objects.create(name="unanimous", threshold=1.0)
    majority = JudgePanel.objects.create(name="majority", threshold=0.51)
    for panel in (unanimous, majority):
        panel.judges.set(judges)  # j3 answered invalidly once: no vote
    assert panel_verdict(unanimous, comparison) == "no_consensus"
    assert panel_verdict(majority, comparison) == "a"  # 2 of 3 votes
    two = JudgePanel.objects.create(name="two", threshold=1.0)
    two.judges.set(judges[:2])
    assert panel_verdict(two, comparison) == "a"
    assert panel_matches(two, Comparison.objects.all()) == []  # one generator: no match


def test_the_admin_shows_each_judges_and_each_panels_verdict(client_for, admin_user,
                                                            django_assert_max_num_queries):
    comparison, judges = _panel_fixture()
    JudgePanel.objects.create(name="majority", threshold=0.51).judges.set(judges)
    client = client_for(admin_user)
    page = client.get(f"/admin/annotation/comparison/{comparison.pk}/change/").content.decode()
    assert "Judge j0: <strong>a</strong>" in page and "Judge j3: <strong>invalid</strong>" in page
    assert "Panel majority (≥ 51%): <strong>a</strong>" in page
    with django_assert_max_num_queries(6):  # session, user, two counts, comparisons, all their verdicts
        listing = client.get("/admin/annotation/comparison/").content.decode()
    assert "j0: a · j1: a · j2: b · j3: invalid" in listing


# --- active pairs --------------------------------------------------------------------------------------


def test_active_pairing_sends_the_pairs_judges_are_least_sure_about_to_experts():
    sample = make_sample()
    p = make_profiles(sample, [1, 2, 3, 4])
    judges = [Judge.objects.create(name=f"j{i}", model="m", base_url="http://127.0.0.1:9/v1") for i in range(2)]
    labels = {  # comparison → each judge's (ab, ba)
        (0, 1): [("a", "a"), ("a", "a")],  # sure
        (0, 2): [("a", "b"), ("a", "b")],  # both judges flip
        (0, 3): [("a", "a"), ("b", "b")],  # judges disagree
        (1, 2): [("b", "b"), ("b", "b")],  # sure
    }
    for (i, j), per_judge in labels.items():
        comparison = Comparison.objects.create(sample=sample, profile_a=p[i], profile_b=p[j])
        for judge, (ab, ba) in zip(judges, per_judge):
            JudgeVerdict.objects.create(comparison=comparison, judge=judge, order="ab", preferred=ab, is_valid=True)
            JudgeVerdict.objects.create(comparison=comparison, judge=judge, order="ba", preferred=ba, is_valid=True)
    campaign = Campaign.objects.create(name="check")
    # Every order is answered already, so the judge (whose server does not exist) is never called.
    message = select_active(Session(judges[0]), Comparison.objects.all(), campaign, limit=2)
    chosen = {(c.profile_a_id, c.profile_b_id) for c in campaign.comparisons.all()}
    assert chosen == {(p[0].pk, p[2].pk), (p[0].pk, p[3].pk)} and "2 most uncertain of 4" in message
    select_active(Session(judges[0]), Comparison.objects.all(), campaign, limit=1)
    assert campaign.comparisons.count() == 3  # the next most uncertain; none added twice


def test_active_pairing_judges_what_this_judge_has_not_seen_first(server):
    make_profiles(make_sample(), [1, 2, 3])
    judge_in_process(http_judge(server, name="first"))
    Comparison.objects.update(source="all")
    campaign = Campaign.objects.create(name="check")
    server.script = first_position_judge
    job = judge_in_process(http_judge(server, name="second"), "active", campaign_id=campaign.pk, limit=2)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert JudgeVerdict.objects.filter(judge__name="second").count() == 6
    assert campaign.comparisons.count() == 2


# --- rankings ------------------------------------------------------------------------------------------


def synthetic_pool(strengths: dict[str, float], comparisons: int, seed: int = 0, tie_band: float = 0.0):
    """A judge whose verdicts follow Bradley–Terry with the given log-strengths (generator name → θ)."""
    rng = random.Random(seed)
    sample = make_sample()
    generators = {name: Generator.objects.create(name=name, backend=Backend.IMPORTED) for name in strengths}
    profiles = {name: make_profiles(sample, [1] * 12, generator=g) for name, g in generators.items()}
    judge = Judge.objects.create(name="synthetic", model="m")
    names = list(strengths)
    verdicts, seen = [], set()
    for _ in range(comparisons):
        x, y = rng.sample(names, 2)
        first, second = Comparison.canonical(rng.choice(profiles[x]), rng.choice(profiles[y]))
        if (first.pk, second.pk) in seen:
            continue
        seen.add((first.pk, second.pk))
        comparison = Comparison.objects.create(sample=sample, profile_a=first, profile_b=second)
        gx, gy = first.generator.name, second.generator.name
        p_a = 1 / (1 + math.exp(strengths[gy] - strengths[gx]))
        u = rng.random()
        label = "tie" if abs(u - p_a) < tie_band else "a" if u < p_a else "b"
        verdicts += [JudgeVerdict(comparison=comparison, judge=judge, order=o, preferred=label, is_valid=True)
                     for o in ("ab", "ba")]
    JudgeVerdict.objects.bulk_create(verdicts)
    return judge


def test_elo_and_bradley_terry_recover_a_known_order_from_synthetic_verdicts():
    strengths = {"weak": -1.5, "base": -0.5, "tuned": 0.5, "large": 1.5}
    judge = synthetic_pool(strengths, comparisons=400, tie_band=0.05)
    matches = judge_matches(judge, Comparison.objects.all())
    assert len(matches) > 300 and {score for *_, score in matches} == {0.0, 0.5, 1.0}
    ranks = rank_generators(matches, k=16, n_boot=200)
    assert [r.name for r in ranks] == ["large", "tuned", "base", "weak"]
    by_elo = sorted(ranks, key=lambda r: -r.elo.value)
    assert [r.name for r in by_elo] == ["large", "tuned", "base", "weak"]
    for r in ranks:
        assert r.bradley_terry.low <= r.bradley_terry.value <= r.bradley_terry.high
    # The Bradley–Terry gaps come back near the true ones (θ differences of 1).
    bt = {r.name: r.bradley_terry.value for r in ranks}
    assert bt["large"] - bt["weak"] == pytest.approx(3.0, abs=0.8)


def test_ties_and_flips_count_half_and_elo_k_is_configurable():
    matches = [("x", "y", 0.5)] * 10
    ranks = rank_generators(matches, k=32, n_boot=50)
    assert {r.name: r.wins for r in ranks} == {"x": 5.0, "y": 5.0}
    assert all(r.elo.value == pytest.approx(1000) and r.bradley_terry.value == pytest.approx(0) for r in ranks)
    wins = [("x", "y", 1.0)] * 3
    gap = {k: rank_generators(wins, k=k, n_boot=10)[0].elo.value - 1000 for k in (8, 32)}
    assert gap[32] > 3 * gap[8]


def test_judge_matches_leave_out_invalid_and_same_generator_comparisons():
    sample = make_sample()
    g1 = Generator.objects.create(name="g1", backend=Backend.IMPORTED)
    g2 = Generator.objects.create(name="g2", backend=Backend.IMPORTED)
    a1, a2 = make_profiles(sample, [1, 1], generator=g1)
    (b1,) = make_profiles(sample, [1], generator=g2)
    judge = Judge.objects.create(name="j", model="m")
    for first, second, (ab, ba) in ((a1, a2, ("a", "a")), (a1, b1, ("a", "b")), (a2, b1, (None, "b"))):
        comparison = Comparison.objects.create(sample=sample, profile_a=first, profile_b=second)
        for order, label in (("ab", ab), ("ba", ba)):
            JudgeVerdict.objects.create(comparison=comparison, judge=judge, order=order, preferred=label or "",
                                        is_valid=label is not None, error="" if label else "bad")
    assert judge_matches(judge, Comparison.objects.all()) == [("g1", "g2", 0.5)]  # the flip, as a half


# --- judge figures in the admin ------------------------------------------------------------------------


def test_judge_figures_in_the_admin_with_few_queries(client_for, admin_user, django_assert_max_num_queries):
    comparison, judges = _panel_fixture()
    JudgeVerdict.objects.filter(judge=judges[0]).update(prompt_tokens=1000, completion_tokens=100, latency_ms=1500,
                                                        cost_usd=Decimal("0.0125"))
    Judge.objects.filter(pk=judges[0].pk).update(backend=Backend.LOCAL)
    client = client_for(admin_user)
    with django_assert_max_num_queries(5):  # session, user, two counts, the judges with all their figures
        listing = client.get("/admin/annotation/judge/").content.decode()
    assert "2,200" in listing and "1.50 s" in listing and "0.0250" in listing
    assert "50%" in listing  # j3: one of two verdicts invalid
    page = client.get(f"/admin/annotation/judge/{judges[0].pk}/change/").content.decode()
    assert "2 verdicts, 0 invalid (0%)" in page and "Order flips: 0 of 1" in page
    assert "First-position preference: 1 of 2 decisive verdicts (50%" in page
    assert "No decided comparisons between different generators yet." in page


def test_the_judge_page_ranks_generators(client_for, admin_user):
    judge = synthetic_pool({"weak": -1.0, "strong": 1.0}, comparisons=60)
    page = client_for(admin_user).get(f"/admin/annotation/judge/{judge.pk}/change/").content.decode()
    assert page.index("<td>strong</td>") < page.index("<td>weak</td>")


def test_an_unannotated_judge_has_no_figures_yet():
    judge = Judge.objects.create(name="fresh", model="m")
    figures = judge_figures(judge)
    assert figures == JudgeFigures(0, 0, 0, 0, 0, 0, 0, 0, None, Decimal(0))
    assert figures.invalid_rate is None


# --- the local judge's decision ------------------------------------------------------------------------


@pytest.mark.parametrize(("p_a", "p_b", "expected", "p"), [
    (0.6, 0.2, "A", 0.75),
    (0.1, 0.3, "B", 0.25),
    (0.3, 0.25, "tie", 0.3 / 0.55),  # |p − ½| < TIE_MARGIN
    (0.03, 0.01, None, None),  # 4% on A + B: not an answer
])
def test_the_local_judge_decides_from_the_next_token_probabilities(p_a, p_b, expected, p):
    outcome = local_outcome(p_a, p_b, 0.0, prompt_tokens=900)
    assert outcome.verdict.preferred == expected
    assert outcome.p_first == (pytest.approx(p) if p is not None else None)
    assert (outcome.verdict.error != "") == (expected is None)
    assert '"p_A": ' in outcome.text and outcome.completion_tokens == 0


def test_local_confidence_is_stored_for_canonical_a():
    sample = make_sample()
    low, high = make_profiles(sample, [1, 2])
    comparison = Comparison.objects.create(sample=sample, profile_a=low, profile_b=high)
    judge = Judge.objects.create(name="local", backend=Backend.LOCAL, model="default")
    ab = verdict_row(judge, comparison.pk, "ab", local_outcome(0.6, 0.2, 0.0))
    ba = verdict_row(judge, comparison.pk, "ba", local_outcome(0.6, 0.2, 0.0))
    assert ab.preferred == "a" and ab.confidence == pytest.approx(0.75)
    assert ba.preferred == "b" and ba.confidence == pytest.approx(0.25)  # "A" was canonical b: P(a better) = 1 − 0.75
