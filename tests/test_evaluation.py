"""Evaluations: a tiny real one end to end in a worker, the loop back to experts, the next round, roles."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.models import (
    Backend, Campaign, Comparison, Generator, Job, JobKind, JobStatus, Judge, JudgeDisplay, JudgeVerdict, Profile,
    Split,
)
from tests.conftest import wait_for
from tests.labels_factory import World
from tests.training_factory import make_export
from training.evaluation import expert_figures, send_to_experts, summarise
from training.start import start_evaluation
from training.models import EvaluationRun, TrainingRun
from training.runs import TrainingError, build_config, create_run

pytestmark = [pytest.mark.urls("tests.training_factory")]


def trained_run(tmp_path, model_dir) -> TrainingRun:
    """A succeeded run with a real (untrained, zero-initialised) LoRA adapter: loading it is what matters here."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    export = make_export(tmp_path / "export")
    run = create_run(export, build_config(export, {"max_steps": 1}), "tiny run")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    peft.save_pretrained(run.output_dir)
    TrainingRun.objects.filter(pk=run.pk).update(status=JobStatus.SUCCEEDED, done=1, total=1)
    run.refresh_from_db()
    return run


def heldout_world(world: World):
    """Two held-out samples; the base and a third model already have profiles, the tuned model has one."""
    first, second = world.sample("held-1", documents=1, split=Split.HELDOUT), world.sample("held-2", documents=1,
                                                                                            split=Split.HELDOUT)
    world.sample("train-1", split=Split.TRAIN)
    base = Generator.objects.create(name="base", backend=Backend.IMPORTED, temperature=0, max_new_tokens=48)
    third = Generator.objects.create(name="larger", backend=Backend.IMPORTED)
    for generator in (base, third):
        for sample in (first, second):
            world.profile(sample, generator.name)
    return first, second, base, third


@pytest.mark.worker
@pytest.mark.model
def test_a_tiny_evaluation_end_to_end(celery_worker_process, client_for, admin_user, alice, bob, tmp_path, settings,
                                      model_dir):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = World()
    first, second, base, third = heldout_world(world)
    run = trained_run(tmp_path, model_dir)
    judge = Judge.objects.create(name="local judge", backend=Backend.LOCAL, model="default")
    # The tuned model's profile of the first sample exists (so one pair is surely judged); the second it writes.
    tuned = Generator.objects.create(name="tuned", backend=Backend.LOCAL, model="default",
                                     adapter_path=run.output_dir, source_run=run, temperature=0, max_new_tokens=48)
    world.profile(first, "tuned")

    client = client_for(admin_user)
    response = client.post("/admin/training/evaluationrun/add/", {
        "training_run": run.pk, "candidate": tuned.pk, "baseline": base.pk, "third": third.pk, "judge": judge.pk,
        "sample_limit": 5, "candidates": 1, "name": "tiny eval"})
    evaluation = EvaluationRun.objects.get()
    assert response["Location"] == f"/training/evaluations/{evaluation.pk}/"

    evaluation = wait_for(lambda: EvaluationRun.objects.filter(pk=evaluation.pk, status__in=[
        JobStatus.SUCCEEDED, JobStatus.FAILED]).first(), timeout=900, what="the evaluation to end")
    assert evaluation.status == JobStatus.SUCCEEDED, evaluation.error
    results = evaluation.results
    assert results["samples"] == 2 and results["candidates"] == 1

    # Every model has one profile per held-out sample, the tuned one written by the real model just now.
    written = Profile.objects.get(generator=tuned, sample=second)
    assert written.raw_text.startswith("Domain:") and written.settings["max_new_tokens"] == 48
    assert {role: v["total"] for role, v in results["valid"].items()} == {"candidate": 2, "baseline": 2, "third": 2}
    assert results["valid"]["baseline"]["rate"] == 1.0
    assert results["valid"]["candidate"]["valid"] == 1 + written.is_valid
    # The run's labels came from experts: the evaluation's judge is the only grader, and says so.
    assert [(j["judge"], j["labelled_training_data"]) for j in results["judges"]] == [("local judge", False)]
    assert results["judges"][0]["versus"]["baseline"]["judged"] == results["versus"]["baseline"]["judged"]
    assert evaluation.labels_source == "experts" and not evaluation.labelling_judges.exists()
    # Length and copying for every model, over its valid profiles.
    assert {role: p["words"]["n"] for role, p in results["profiles"].items()} == {
        role: v["valid"] for role, v in results["valid"].items()}

    for role in ("baseline", "third"):
        versus = results["versus"][role]
        ids = versus["comparison_ids"]
        assert len(ids) == 1 + written.is_valid and len(ids) + versus["forfeits"]["n"] == 2
        assert versus["judged"]["n"] + versus["judged"]["invalid"] == len(ids)
        assert versus["with_forfeits"]["n"] == versus["judged"]["n"] + versus["forfeits"]["n"]
        # Judged in both orders with the chosen judge, as evaluation comparisons.
        assert JudgeVerdict.objects.filter(comparison__in=ids, judge=judge).count() == 2 * len(ids)
        assert set(Comparison.objects.filter(pk__in=ids).values_list("source", flat=True)) == {"evaluation"}
    kinds = list(Job.objects.filter(params__evaluation_id=evaluation.pk).order_by("pk").values_list("kind", "status"))
    assert kinds == [(JobKind.GENERATE, "succeeded")] * 3 + [(JobKind.JUDGE, "succeeded")]

    page = client.get(f"/training/evaluations/{evaluation.pk}/").content.decode()
    assert "Tuned vs base" in page and "Tuned vs larger" in page and "All pairs, invalid profile loses" in page
    assert "What a win could be bought with" in page and "Win rate per judge" in page
    assert "Training data labelled by <strong>experts</strong>" in page
    assert "hx-trigger" not in page and "Send to experts" in page

    # The loop back to experts: a blind campaign from the judged pairs...
    client.post(f"/training/evaluations/{evaluation.pk}/experts", {"size": 10, "experts": [alice.pk, bob.pk],
                                                                 "overlap": 2})
    evaluation.refresh_from_db()
    campaign = evaluation.expert_campaign
    assert campaign.judge_display == JudgeDisplay.HIDDEN and set(campaign.experts.all()) == {alice, bob}
    assert set(campaign.comparisons.values_list("pk", flat=True)) == set(results["versus"]["baseline"]["comparison_ids"])
    # ...whose votes then sit beside the judge's figures.
    comparison = campaign.comparisons.first()
    world.vote(campaign, comparison, alice, "a" if comparison.profile_a.generator_id == tuned.pk else "b")
    page = client.get(f"/training/evaluations/{evaluation.pk}/").content.decode()
    assert "1 of" in page and "Experts" in page and "Judge, the same pairs" in page

    # And the tuned model becomes the next round's generator in one click.
    response = client.post(f"/training/evaluations/{evaluation.pk}/generator")
    assert response["Location"] == f"/admin/annotation/generator/{tuned.pk}/change/"


@pytest.fixture
def judged_evaluation(db, tmp_path, settings):
    """A finished evaluation built by hand: three judged pairs (won, lost, flipped) and one forfeit."""
    settings.MEDIA_ROOT = tmp_path / "media"
    world = World()
    judge = world.judge("gpt")
    base, tuned = world.generator("base"), world.generator("tuned")
    comparisons = [world.comparison(world.sample(split=Split.HELDOUT), "base", "tuned") for _ in range(3)]
    world.verdicts(comparisons[0], judge, "b", "b")  # tuned (profile_b) wins
    world.verdicts(comparisons[1], judge, "a", "a")  # base wins
    world.verdicts(comparisons[2], judge, "a", "b")  # flips with the order
    evaluation = EvaluationRun.objects.create(
        name="hand-made", candidate=tuned, baseline=base, judge=judge, status=JobStatus.SUCCEEDED,
        results={"versus": {"baseline": {"opponent": "base", "judged": summarise(["win", "loss", "inconsistent"]),
                                         "with_forfeits": summarise(["win", "loss", "inconsistent", "win"]),
                                         "forfeits": summarise(["win"]),
                                         "comparison_ids": [c.pk for c in comparisons]}}})
    return evaluation, comparisons, world


def test_sending_to_experts_samples_the_judged_pairs_blind(judged_evaluation, alice, bob):
    evaluation, comparisons, _ = judged_evaluation
    campaign = send_to_experts(evaluation, [alice], size=2, overlap=1)
    assert campaign.items.count() == 2 and list(campaign.experts.all()) == [alice]
    assert set(campaign.comparisons.values_list("pk", flat=True)) <= {c.pk for c in comparisons}
    assert campaign.judge_display == JudgeDisplay.HIDDEN and "Which model wrote which is not shown" in campaign.description
    # What experts read names no model: not the title, not the description; and they have guidelines.
    for name in (evaluation.name, evaluation.candidate.name, evaluation.baseline.name):
        assert name not in campaign.name and name not in campaign.description
    assert "Choose the profile that better reflects" in campaign.guidelines
    with pytest.raises(TrainingError, match="already sent"):
        send_to_experts(evaluation, [bob], size=2)


def test_expert_and_judge_win_rates_are_read_side_by_side(judged_evaluation, alice, bob):
    evaluation, comparisons, world = judged_evaluation
    campaign = world.campaign("check")
    EvaluationRun.objects.filter(pk=evaluation.pk).update(expert_campaign=campaign)
    evaluation.refresh_from_db()
    # Experts: pair 0 tuned (b) by both; pair 1 split → tie; pair 2 tuned; pair 3 is in the campaign, unvoted.
    world.vote(campaign, comparisons[0], alice, "b")
    world.vote(campaign, comparisons[0], bob, "b")
    world.vote(campaign, comparisons[1], alice, "a")
    world.vote(campaign, comparisons[1], bob, "b")
    world.vote(campaign, comparisons[2], alice, "b")
    world.campaign("check").items.get_or_create(comparison=world.comparison(world.sample()))
    figures = expert_figures(evaluation)
    assert (figures["items"], figures["voted"], figures["votes"]) == (4, 3, 5)
    experts = figures["experts"]
    assert (experts["wins"], experts["ties"], experts["losses"]) == (2, 1, 0) and experts["win_rate"] == pytest.approx(5 / 6, abs=1e-4)
    judge = figures["judge_same_pairs"]  # on the same three pairs: win, loss, flip
    assert (judge["wins"], judge["ties"], judge["losses"]) == (1, 1, 1) and judge["win_rate"] == 0.5


def test_the_page_shows_both_tables_and_offers_the_expert_check(client_for, admin_user, alice, judged_evaluation):
    evaluation, _, _ = judged_evaluation
    page = client_for(admin_user).get(f"/training/evaluations/{evaluation.pk}/").content.decode()
    assert "Tuned vs base" in page and "50%" in page and "Judged pairs (both valid)" in page
    assert "1 flipped with the order" in page
    assert "Valid profiles" not in page  # this one has no valid-profile figures: no empty table for them
    assert "Send a random sample of the 3 judged" in page and "alice" in page
    # Fewer judged pairs than the usual 20: the form offers all of them.
    assert re.search(r'name="size" value="3"', page)


def test_one_judged_pair_is_offered_in_the_singular(client_for, admin_user, judged_evaluation):
    evaluation, comparisons, _ = judged_evaluation
    results = evaluation.results
    results["versus"]["baseline"]["comparison_ids"] = [comparisons[0].pk]  # the demo's evaluation: one pair
    EvaluationRun.objects.filter(pk=evaluation.pk).update(results=results)
    page = client_for(admin_user).get(f"/training/evaluations/{evaluation.pk}/").content.decode()
    assert "Send the one judged tuned-vs-base pair" in page and "the 1 judged" not in page


def test_evaluation_needs_heldout_samples_and_distinct_models(db):
    world = World()
    judge, base, tuned = world.judge(), world.generator("base"), world.generator("tuned")
    with pytest.raises(TrainingError, match="no held-out samples"):
        start_evaluation(judge, candidate=tuned, baseline=base)
    world.sample(split=Split.HELDOUT)
    with pytest.raises(TrainingError, match="different generators"):
        start_evaluation(judge, candidate=tuned, baseline=tuned)
    with pytest.raises(TrainingError, match="training run or a candidate"):
        start_evaluation(judge, baseline=base)
    assert not EvaluationRun.objects.exists()


def test_an_evaluation_of_a_run_makes_the_tuned_and_base_generators(db, tmp_path, settings, model_dir,
                                                                   django_capture_on_commit_callbacks):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = World()
    world.sample(split=Split.HELDOUT)
    run = trained_run(tmp_path, model_dir)
    with django_capture_on_commit_callbacks() as callbacks:
        evaluation = start_evaluation(world.judge(), training_run=run, sample_limit=3)
    assert len(callbacks) == 1 and evaluation.status == JobStatus.QUEUED
    assert evaluation.candidate.adapter_path == run.output_dir and evaluation.candidate.source_run == run
    assert evaluation.baseline.adapter_path == "" and evaluation.baseline.model == run.base_model
    assert evaluation.training_run == run


def test_the_tuned_model_decodes_as_the_baseline_it_meets(db, tmp_path, settings, model_dir):
    """Only the adapter may differ: a tuned model sampling hotter than its base would lose for that alone."""
    settings.MEDIA_ROOT = tmp_path / "media"
    world = World()
    world.sample(split=Split.HELDOUT)
    run = trained_run(tmp_path, model_dir)
    demo_base = Generator.objects.create(name="demo base", backend=Backend.LOCAL, model=run.base_model,
                                         temperature=0.5, max_new_tokens=256, format_guide=True)
    evaluation = start_evaluation(world.judge(), training_run=run)
    assert evaluation.baseline == demo_base

    def decoding(generator):
        return {k: v for k, v in generator.decoding_settings().items() if k != "adapter_path"}

    assert decoding(evaluation.candidate) == decoding(demo_base)
    # Against a baseline that decodes otherwise, the run gets a tuned generator of that decoding, not the first one.
    greedy = Generator.objects.create(name="greedy base", backend=Backend.LOCAL, model=run.base_model, temperature=0)
    second = start_evaluation(world.judge(), training_run=run, baseline=greedy)
    assert second.candidate != evaluation.candidate and decoding(second.candidate) == decoding(greedy)
    assert start_evaluation(world.judge(), training_run=run, baseline=greedy).candidate == second.candidate


def test_cancel_and_a_dead_worker(client_for, admin_user, judged_evaluation):
    evaluation, _, _ = judged_evaluation
    client = client_for(admin_user)
    EvaluationRun.objects.filter(pk=evaluation.pk).update(status=JobStatus.QUEUED)
    client.post(f"/training/evaluations/{evaluation.pk}/cancel")
    assert EvaluationRun.objects.get(pk=evaluation.pk).status == JobStatus.CANCELLED

    EvaluationRun.objects.filter(pk=evaluation.pk).update(status=JobStatus.RUNNING, worker="w@h",
                                                          heartbeat_at=timezone.now() - timedelta(minutes=5))
    client.get(f"/training/evaluations/{evaluation.pk}/")
    evaluation.refresh_from_db()
    assert evaluation.status == JobStatus.FAILED and evaluation.error.startswith("No heartbeat from w@h")


EVALUATION_URLS = [("get", "/training/evaluations/{pk}/"), ("post", "/training/evaluations/{pk}/cancel"),
                   ("post", "/training/evaluations/{pk}/experts"), ("post", "/training/evaluations/{pk}/generator"),
                   ("get", "/admin/training/evaluationrun/add/")]


@pytest.mark.parametrize(("method", "url"), EVALUATION_URLS)
@pytest.mark.parametrize("persona", ["alice", "charlie"])
def test_evaluation_pages_are_for_admins_only(client_for, request, persona, judged_evaluation, method, url):
    evaluation, _, _ = judged_evaluation
    response = getattr(client_for(request.getfixturevalue(persona)), method)(url.format(pk=evaluation.pk),
                                                                            {"size": 1, "experts": [1]})
    assert response.status_code == 403 or response["Location"].startswith("/admin/login/")
    assert not Campaign.objects.exists() and Generator.objects.count() == 2


@pytest.mark.parametrize(("method", "url"), EVALUATION_URLS)
def test_anonymous_users_cannot_see_evaluations(client, judged_evaluation, method, url):
    evaluation, _, _ = judged_evaluation
    location = getattr(client, method)(url.format(pk=evaluation.pk))["Location"]
    assert location.startswith("/accounts/login/") or location.startswith("/admin/login/")


def test_an_admin_sees_the_evaluation_form(client_for, admin_user, judged_evaluation):
    page = client_for(admin_user).get("/admin/training/evaluationrun/add/").content.decode()
    assert "Held-out samples" in page and "Profiles per sample and model" in page


def test_the_command_starts_the_same_evaluation(db, django_capture_on_commit_callbacks):
    from io import StringIO

    from django.core.management import CommandError, call_command

    world = World()
    world.sample(split=Split.HELDOUT)
    judge, base, tuned = world.judge(), world.generator("base"), world.generator("tuned")
    out = StringIO()
    with django_capture_on_commit_callbacks() as callbacks:
        call_command("start_evaluation", "--candidate", "tuned", "--baseline", "base", "--judge", judge.name,
                     "--samples", "5", "--candidates", "3", "--no-wait", stdout=out)
    evaluation = EvaluationRun.objects.get()
    assert len(callbacks) == 1 and f"Evaluation #{evaluation.pk}" in out.getvalue()
    assert (evaluation.candidate, evaluation.baseline, evaluation.sample_limit, evaluation.candidates) == (
        tuned, base, 5, 3)
    with pytest.raises(CommandError, match="no judge"):
        call_command("start_evaluation", "--candidate", "tuned", "--judge", "nobody", "--no-wait")


class Ticking:
    """A clock 10 s further on at each reading: the evaluation's rate is then known whatever the machine."""

    def __init__(self):
        import time

        self.now = time.time()

    def time(self) -> float:
        self.now += 10
        return self.now


def test_the_page_counts_profiles_generated_then_pairs_judged_live(db, monkeypatch, client_for, admin_user):
    """The evaluation's own done/total move with its jobs (a batch half generated moves the points), and its page
    shows them with a rate and an ETA."""
    from annotation.jobs import lifecycle
    from training import evaluation as evaluations

    monkeypatch.setattr(evaluations, "time", Ticking())
    monkeypatch.setattr(lifecycle, "time", Ticking())
    world = World()
    samples = [world.sample(split=Split.HELDOUT, documents=1) for _ in range(2)]
    tuned, base, judge = world.generator("tuned"), world.generator("base"), world.judge("independent")
    evaluation = EvaluationRun.objects.create(name="live", candidate=tuned, baseline=base, judge=judge,
                                              sample_limit=2, candidates=1)
    seen, pages = [], []

    def now():
        row = EvaluationRun.objects.get(pk=evaluation.pk)
        seen.append((row.done, row.total, row.progress_points[-1][1]))

    def generate(job, progress):
        progress.start(total=len(samples))
        for n, sample in enumerate(samples, start=1):
            progress.within(n - 0.5, "half a sample written")
            now()
            world.profile(sample, Generator.objects.get(pk=job.params["generator_id"]).name)
            progress.advance(n)
            now()

    def judging(job, progress):
        progress.start(total=4)  # two pairs in two orders
        for n in (2, 4):
            progress.advance(n)
            now()
            pages.append(client_for(admin_user).get(f"/training/evaluations/{evaluation.pk}/").content.decode())

    monkeypatch.setattr(evaluations, "run_generation", generate)
    monkeypatch.setattr(evaluations, "run_judging", judging)
    assert evaluations.run_evaluation(evaluation.pk) == JobStatus.SUCCEEDED
    # Four profiles (two samples, two models), then two pairs for the one judge.
    assert seen == [(0, 4, 0.5), (1, 4, 1), (1, 4, 1.5), (2, 4, 2), (2, 4, 2.5), (3, 4, 3), (3, 4, 3.5), (4, 4, 4),
                    (1, 2, 1), (2, 2, 2)]
    assert "1 / 2 pairs judged" in pages[0] and "10 s per pair" in pages[0] and "about 10 s left" in pages[0]
    assert 'hx-trigger="every 2s"' in pages[0]
