"""The scoring judge: each profile scored once against its abstracts, a pair decided by the PMI difference, no
presentation order; stored, counted and exported like any judge's verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import include, path

from annotation.export.dataset import export_dataset
from annotation.judging.backends import ScoringJudgeBackend, scoring_outcome
from annotation.judging.figures import judge_figures
from annotation.judging.panels import panel_verdicts
from annotation.judging.session import Session, baseline_samples, scoring_requests
from annotation.models import (
    Comparison, DatasetExport, Judge, JudgeBackend, JudgeOrders, JudgePanel, JudgeVerdict, JobStatus, Profile,
)
from compx_site import urls as site_urls
from tests.labels_factory import World
from tests.test_judging_server import judge_in_process, make_sample
from training.ml.scoring import SCORER_PROMPT_VERSION, ProfileScore

# The dashboard is mounted here as tests/test_dashboard.py does.
urlpatterns = list(site_urls.urlpatterns)
if not any(getattr(p, "namespace", None) == "dashboard" for p in urlpatterns):
    urlpatterns.append(path("admin-tools/", include("annotation.agreement.urls")))

pytestmark = pytest.mark.django_db

HYDROLOGY = ('Domain: "Hydrology"\n\nCompetencies:\n- Ensemble Kalman filters: assimilating river gauge data.\n'
             '- Glacier melt modelling: runoff under downscaled climate projections.')
GENERIC = 'Domain: "Research"\n\nCompetencies:\n- Research: doing research.\n- Teamwork: working in teams.'
ASTRONOMY = ('Domain: "Astronomy"\n\nCompetencies:\n- Galaxy clusters: Bayesian mass estimates.\n'
             '- Telescopes: observing the sky.')
CUT_OFF = 'Domain: "Hydrology"\n\nCompetencies:\n- Flood forecasting: ensemble Kalman filters on river'


def scoring_judge(name: str = "scorer", **fields) -> Judge:
    judge = Judge(name=name, backend=JudgeBackend.SCORING, model="default", **fields)
    judge.full_clean()
    judge.save()
    return judge


def score(pmi: float | None) -> ProfileScore:
    if pmi is None:
        return ProfileScore(None, None, 0, "empty profile: nothing to score")
    return ProfileScore(pmi, 0.0, 20)  # exact: the PMI is conditional − baseline


# --- deciding a pair ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [(0.30, 0.10), (0.10, 0.30), (0.20, 0.19), (None, 0.1), (0.1, None), (None, None)])
def test_a_pairs_verdict_is_its_mirror_image(a, b):
    forward, mirrored = scoring_outcome(score(a), score(b), 0.02), scoring_outcome(score(b), score(a), 0.02)
    swap = {"A": "B", "B": "A", "tie": "tie"}
    assert mirrored.verdict.preferred == swap[forward.verdict.preferred]
    assert mirrored.p_first == pytest.approx(1 - forward.p_first)
    assert json.loads(forward.text)["a"] == json.loads(mirrored.text)["b"]


def test_the_confidence_is_the_difference_on_the_judges_common_scale():
    outcome = scoring_outcome(score(0.30), score(0.10), 0.02)
    raw = json.loads(outcome.text)
    assert raw["difference"] == pytest.approx(0.20) and raw["margin"] == 0.02
    assert outcome.verdict.preferred == "A"
    # ½ is no preference, as for every judge: σ(difference), Bradley–Terry with the PMI as strength.
    assert outcome.p_first == pytest.approx(1 / (1 + math.exp(-0.20)))
    assert scoring_outcome(score(0.10), score(0.30), 0.02).p_first == pytest.approx(1 - outcome.p_first)


# Binary fractions, so "exactly the margin" is exact.
@pytest.mark.parametrize("difference, expected", [(0.25, "tie"), (-0.25, "tie"), (0.0, "tie"), (0.375, "A"),
                                                  (-0.375, "B")])
def test_a_difference_within_the_tie_margin_is_a_tie(difference, expected):
    outcome = scoring_outcome(score(0.5 + difference), score(0.5), 0.25)
    assert outcome.verdict.preferred == expected
    assert ("within the tie margin" in outcome.verdict.reasoning) == (expected == "tie")


def test_an_empty_profile_loses_and_two_empty_ones_tie():
    assert scoring_outcome(score(None), score(-0.5), 0.02).verdict.preferred == "B"
    both = scoring_outcome(score(None), score(None), 0.02)
    assert both.verdict.preferred == "tie" and both.p_first == 0.5 and "Neither profile" in both.verdict.reasoning


# --- the judge kind ----------------------------------------------------------------------------------------


def test_a_scoring_judge_has_no_presentation_order_and_the_scorers_prompt_version():
    judge = scoring_judge(orders=JudgeOrders.BOTH, prompt_version="judge-v1")
    assert judge.orders == JudgeOrders.NONE and judge.orderless and judge.orders_for(7) == ("ab",)
    assert judge.prompt_version == SCORER_PROMPT_VERSION and judge.orders_asked == 1
    assert judge.scorer_settings().margin == judge.score_margin


def test_only_a_scoring_judge_may_have_no_order():
    with pytest.raises(ValidationError, match="only a scoring judge"):
        Judge(name="http", backend=JudgeBackend.OPENAI, model="m", orders=JudgeOrders.NONE).full_clean()
    with transaction.atomic(), pytest.raises(IntegrityError):
        Judge.objects.create(name="s", backend=JudgeBackend.SCORING, model="default", orders=JudgeOrders.BOTH)
    with transaction.atomic(), pytest.raises(IntegrityError):
        Judge.objects.create(name="o", backend=JudgeBackend.OPENAI, model="m", orders=JudgeOrders.NONE)


def test_bad_scorer_settings_are_refused_with_the_field_named():
    with pytest.raises(ValidationError, match="margin"):
        scoring_judge(score_margin=float("inf"))


def test_an_admin_creates_a_scoring_judge_from_the_judge_admin(client_for, admin_user):
    response = client_for(admin_user).post("/admin/annotation/judge/add/", {
        "name": "pmi", "backend": "scoring", "model": "gemma", "prompt_version": "judge-v1", "orders": "both",
        "score_baseline": "none", "score_part": "competencies", "score_margin": "0.05", "temperature": "0",
        "max_tokens": "512", "concurrency": "4", "price_prompt_per_mtok": "0", "price_completion_per_mtok": "0",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    judge = Judge.objects.get(name="pmi")
    assert (judge.orders, judge.prompt_version, judge.model) == (JudgeOrders.NONE, SCORER_PROMPT_VERSION, "gemma")
    assert judge.scorer_settings().to_dict()["baseline"] == "none" and judge.score_margin == 0.05


def test_each_samples_baseline_is_the_sample_before_it_and_stays_put_as_samples_are_added():
    first, second = make_sample("one"), make_sample("two")
    assert baseline_samples([first.pk, second.pk]) == {first.pk: second.pk, second.pk: first.pk}
    third = make_sample("three")
    assert baseline_samples([second.pk, third.pk]) == {second.pk: first.pk, third.pk: second.pk}


def test_baseline_other_with_a_single_sample_says_what_to_do():
    with pytest.raises(ValueError, match='set the judge\'s baseline to "none"'):
        baseline_samples([make_sample().pk])


# --- counted like any judge (hand-made verdicts: no model) ------------------------------------------------------


@pytest.fixture
def scored_world(alice):
    """An A/B judge (both orders) and a scoring judge (one verdict each) on three comparisons."""
    world = World()
    ab_judge, scorer = world.judge("ab-judge"), scoring_judge()
    comparisons = [world.comparison() for _ in range(3)]
    campaign = world.campaign("c", judge=scorer, display="reveal")
    for comparison, label in zip(comparisons, ["a", "b", "tie"]):
        world.verdicts(comparison, ab_judge, label, label)
        JudgeVerdict.objects.create(comparison=comparison, judge=scorer, order="ab", preferred=label, is_valid=True,
                                    raw_text="{}", confidence={"a": 0.6, "b": 0.4, "tie": 0.5}[label])
        world.vote(campaign, comparison, alice, label)
    return world, ab_judge, scorer, comparisons, campaign


def test_its_one_verdict_is_a_complete_decided_verdict(scored_world):
    _, ab_judge, scorer, comparisons, _ = scored_world
    combined = JudgeVerdict.objects.filter(judge=scorer).combined()
    assert [combined[(c.pk, scorer.pk)] for c in comparisons] == ["a", "b", "tie"]
    panel = JudgePanel.objects.create(name="two judges agree", threshold=1.0)
    panel.judges.add(ab_judge, scorer)
    assert list(panel_verdicts(panel, [c.pk for c in comparisons]).values()) == ["a", "b", "tie"]


def test_its_order_flips_and_first_position_are_not_applicable(scored_world, client_for, admin_user, settings):
    _, _, scorer, _, campaign = scored_world
    figures = judge_figures(scorer)
    assert figures.orderless and figures.flip_rate is None and figures.first_position_rate is None
    assert figures.verdicts == 3
    page = client_for(admin_user).get("/admin/annotation/judge/").content.decode()
    assert "not applicable (no order)" in page
    settings.ROOT_URLCONF = __name__
    dashboard = client_for(admin_user).get("/admin-tools/agreement/", {"campaign": campaign.pk}).content.decode()
    assert dashboard.count("not applicable (no order)") == 1  # the scorer's row; the A/B judge's has rates


def test_the_review_screen_says_the_verdict_was_scored_not_shown_in_an_order(scored_world, alice):
    from annotation.models import Assignment
    from annotation.review.assignments import verdicts_on
    from annotation.review.screen import Pair, judge_view

    _, _, scorer, comparisons, _ = scored_world
    assignment = Assignment.objects.get(item__comparison=comparisons[0], expert=alice)
    view = judge_view(verdicts_on(assignment, scorer.pk), Pair.of(assignment))
    assert view.outcome in ("left", "right") and "scoring each profile on its own" in view.headline
    assert "presentation order it was asked" not in view.headline


def test_judge_consensus_exports_take_its_verdicts_and_the_card_says_not_applicable(scored_world, settings,
                                                                                    tmp_path):
    settings.MEDIA_ROOT = tmp_path
    _, ab_judge, scorer, comparisons, _ = scored_world
    panel = JudgePanel.objects.create(name="scorer only", threshold=1.0)
    panel.judges.add(scorer)
    item = DatasetExport.objects.create(name="v1", policy="judge_consensus", panel=panel, test_fraction=0.0)
    export_dataset(item)
    item.refresh_from_db()
    assert item.status == JobStatus.SUCCEEDED, item.error
    rows = [json.loads(line) for line in (Path(item.path) / "train.jsonl").read_text().splitlines()]
    assert sorted((r["comparison_id"], r["decision"]) for r in rows) == [(comparisons[0].pk, "a"),
                                                                          (comparisons[1].pk, "b")]
    assert "one_order" not in item.counts["dropped"]
    assert "not applicable (no order)" in item.card


# --- the real model --------------------------------------------------------------------------------------------


def hydrology_world() -> tuple[list[Profile], list[Comparison]]:
    """Sample "hydro" with four profiles (grounded, generic, another field's, cut off), all six pairs, and a
    second sample for the baseline."""
    sample = make_sample("hydro")
    world = World()
    world.sample("proteins")  # other abstracts: the baseline
    texts = [(HYDROLOGY, True), (GENERIC, True), (ASTRONOMY, True), (CUT_OFF, False)]
    profiles = [world.profile(sample, "gen", text, valid) for text, valid in texts]
    pairs = [(sample.pk, p.pk, q.pk) for i, p in enumerate(profiles) for q in profiles[i + 1:]]
    return profiles, Comparison.objects.ensure(pairs, "all")


@pytest.mark.model
def test_each_profile_is_scored_once_and_each_context_encoded_once(monkeypatch):
    from training.ml.scoring import Scorer

    profiles, comparisons = hydrology_world()
    passes = []
    real = Scorer.token_logprobs
    monkeypatch.setattr(Scorer, "token_logprobs",
                        lambda self, abstracts, targets, *rest: passes.append(len(targets)) or real(
                            self, abstracts, targets, *rest))
    session = Session(scoring_judge())
    session.judge_comparisons(comparisons[:3])  # a tournament's first round, say
    session.judge_comparisons(comparisons[3:])  # and the rest: the same four profiles
    assert session.backend.scorer.encodings == 2  # the sample's abstracts and its baseline's, once each
    assert passes == [4, 4]  # each profile read once per context, all four together
    assert JudgeVerdict.objects.count() == 6 and set(JudgeVerdict.objects.values_list("order", flat=True)) == {"ab"}


@pytest.mark.model
def test_the_verdict_does_not_depend_on_which_profile_is_a():
    profiles, comparisons = hydrology_world()
    judge = scoring_judge()
    forward = scoring_requests(judge, comparisons)
    mirrored = [type(r)(r.sample_id, r.profile_b, r.profile_a, r.abstracts, r.baselines) for r in forward[::-1]]
    ours = {i: o for i, o in ScoringJudgeBackend(judge).run(forward)}
    theirs = {i: o for i, o in ScoringJudgeBackend(judge).run(mirrored)}  # fresh: scored again, in another order
    swap = {"A": "B", "B": "A", "tie": "tie"}
    for i, outcome in ours.items():
        other = theirs[len(forward) - 1 - i]
        assert other.verdict.preferred == swap[outcome.verdict.preferred]
        assert other.p_first == pytest.approx(1 - outcome.p_first, abs=1e-6)


@pytest.mark.model
def test_the_judging_job_stores_scores_difference_and_margin_and_scores_invalid_profiles_as_the_ab_judge_reads_them():
    profiles, comparisons = hydrology_world()
    empty = World().profile(profiles[0].sample, "gen", " ", valid=False)
    with_empty = Comparison.objects.ensure([(empty.sample_id, profiles[0].pk, empty.pk)], "imported")[0]
    judge = scoring_judge()
    ids = [c.pk for c in comparisons] + [with_empty.pk]
    job = judge_in_process(judge, "existing", comparison_ids=ids)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert (job.done, job.total) == (7, 7) and job.stats["verdicts"] == 7 and "7 new verdicts" in job.message
    verdicts = {v.comparison_id: v for v in JudgeVerdict.objects.filter(judge=judge)}
    assert len(verdicts) == 7 and all(v.is_valid and v.order == "ab" for v in verdicts.values())
    for v in verdicts.values():
        raw = json.loads(v.raw_text)
        assert raw["margin"] == judge.score_margin and raw["scorer"]["model"] == "default"
        assert v.prompt_version == SCORER_PROMPT_VERSION and v.completion_tokens == 0
        if raw["difference"] is not None:
            assert raw["difference"] == pytest.approx(raw["a"]["pmi"] - raw["b"]["pmi"])
            assert v.confidence == pytest.approx(1 / (1 + math.exp(-raw["difference"])))
            expected = "tie" if abs(raw["difference"]) <= raw["margin"] else ("a" if raw["difference"] > 0 else "b")
            assert v.preferred == expected
    # The cut-off (invalid) profile is scored on its text, as the A/B judge reads it; the empty one loses.
    cut_off = next(c for c in comparisons if profiles[3].pk in (c.profile_a_id, c.profile_b_id))
    assert json.loads(verdicts[cut_off.pk].raw_text)["difference"] is not None
    lost = verdicts[with_empty.pk]
    assert lost.preferred == ("a" if with_empty.profile_a_id == profiles[0].pk else "b")
    assert "could not be scored" in lost.reasoning
    # The grounded profile beats the generic one and the other field's.
    grounded = profiles[0].pk
    for loser in (profiles[1].pk, profiles[2].pk):
        c = next(c for c in comparisons if {c.profile_a_id, c.profile_b_id} == {grounded, loser})
        assert verdicts[c.pk].preferred == ("a" if c.profile_a_id == grounded else "b")
    again = judge_in_process(judge, "existing", comparison_ids=ids)
    assert "0 new verdicts (0 invalid), 7 already there" in again.message
