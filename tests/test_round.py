"""The round as one command: presets, refusals, the page, and the tiny preset end to end with the real SmolLM2."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from annotation.models import DatasetExport, ExportPolicy, Job, JobKind, JobStatus, Judge, Split
from tests.labels_factory import World
from training.management.commands.run_round import preset_from
from training.models import EvaluationRun, Round, TrainingRun
from training.presets import PRESETS, create_round, evaluation_judge, labelling_panel
from training.runs import TrainingError

pytestmark = [pytest.mark.urls("tests.training_factory")]


def demo_samples() -> None:
    """Samples with real abstracts (the demo's), so the real model writes profiles worth scoring."""
    from annotation.documents.importing import ImportOptions, import_documents
    from annotation.management.commands.seed_demo import DEMO_FILE

    import_documents(DEMO_FILE, ImportOptions(group_by="author", sample_size=2, heldout_fraction=0.4))


def test_command_options_change_the_preset_and_nothing_else():
    options = {"preset": "cpu", "steps": 7, "beta": 0.3, "lora_r": 8, "label_margin": 0.2, "policy": "agree",
               "candidates": None}
    before = PRESETS["cpu"].to_dict()
    preset = preset_from(options)
    assert preset.training["max_steps"] == 7 and preset.training["beta"] == 0.3
    assert (preset.training["lora_r"], preset.training["lora_alpha"]) == (8, 16)
    assert preset.label_margin == 0.2 and preset.policy == "agree"
    assert preset.candidates == PRESETS["cpu"].candidates  # not given: the preset's
    assert PRESETS["cpu"].to_dict() == before  # the preset itself is untouched


def test_the_labelling_and_grading_judges_differ_and_are_made_once(db):
    cpu = PRESETS["cpu"]
    panel = labelling_panel(cpu)
    (labeller,) = panel.judges.all()
    grader = evaluation_judge(cpu)
    assert labeller.backend == grader.backend == "scoring" and labeller != grader
    assert (labeller.model, labeller.score_margin) == ("default", cpu.label_margin)
    assert grader.model == "gemma" and panel.threshold == 1.0
    assert labelling_panel(cpu).judges.get() == labeller and evaluation_judge(cpu) == grader  # reused
    agree = labelling_panel(cpu.with_changes(policy="agree"))
    assert agree.judges.count() == 2 and {j.score_baseline for j in agree.judges.all()} == {"other", "none"}
    # The tiny preset grades with SmolLM2 too (no Gemma load in a test), under another baseline.
    tiny = evaluation_judge(PRESETS["tiny"])
    assert tiny.model == "default" and tiny.score_baseline == "none"


def test_a_round_needs_train_and_heldout_samples(db):
    world = World()
    with pytest.raises(TrainingError, match="no train samples"):
        create_round(PRESETS["tiny"])
    world.sample(split=Split.TRAIN)
    with pytest.raises(TrainingError, match="no held-out samples"):
        create_round(PRESETS["tiny"])
    with pytest.raises(CommandError, match="no held-out samples"):
        call_command("run_round", "--preset", "tiny", stdout=io.StringIO())
    assert not Round.objects.exists()


def test_the_round_page_is_for_admins_only(db, client_for, admin_user, alice):
    world = World()
    world.sample(split=Split.TRAIN), world.sample(split=Split.HELDOUT)
    row = create_round(PRESETS["tiny"])
    assert client_for(alice).get(f"/training/rounds/{row.pk}/").status_code in (302, 403)
    assert client_for(alice).post(f"/training/rounds/{row.pk}/cancel").status_code in (302, 403)
    assert Round.objects.get(pk=row.pk).status == JobStatus.QUEUED
    page = client_for(admin_user).get(f"/training/rounds/{row.pk}/").content.decode()
    assert "Label pairs with the scoring judge" in page and "not started" in page and "hx-trigger" in page
    client_for(admin_user).post(f"/training/rounds/{row.pk}/cancel")
    assert Round.objects.get(pk=row.pk).status == JobStatus.CANCELLED


def test_the_admin_starts_a_round_in_a_worker(db, client_for, admin_user, django_capture_on_commit_callbacks):
    world = World()
    world.sample(split=Split.TRAIN), world.sample(split=Split.HELDOUT)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(admin_user).post("/admin/training/round/add/", {"preset": "tiny",
                                                                               "policy": "high_margin"})
    row = Round.objects.get()
    assert response["Location"] == f"/training/rounds/{row.pk}/" and len(callbacks) == 1
    assert row.status == JobStatus.QUEUED and row.settings["name"] == "tiny"


@pytest.mark.model
def test_the_tiny_round_end_to_end(db, tmp_path, settings, client_for, admin_user):
    """Every step for real, small: SmolLM2 writes, the PMI judge labels, DPO trains two steps, and the
    independent judge and the labelling judge grade tuned vs base on a held-out sample."""
    settings.MEDIA_ROOT = tmp_path / "media"
    demo_samples()
    out = io.StringIO()
    call_command("run_round", "--preset", "tiny", stdout=out)
    row = Round.objects.get()
    assert row.status == JobStatus.SUCCEEDED, row.error
    assert "running in this process" in out.getvalue() and "Succeeded" in out.getvalue()
    assert row.done == row.total == 5 and set(row.steps["seconds"]) == {"generate", "label", "export", "train",
                                                                       "evaluate"}

    jobs = {job.kind: job for job in Job.objects.filter(params__round_id=row.pk)}
    assert set(jobs) == {JobKind.GENERATE, JobKind.JUDGE, JobKind.EXPORT}
    assert all(job.status == JobStatus.SUCCEEDED for job in jobs.values())
    labeller = row.labelling_panel.judges.get()
    assert jobs[JobKind.JUDGE].params["judge_id"] == labeller.pk

    export = DatasetExport.objects.get(pk=row.export_id)
    assert export.policy == ExportPolicy.JUDGE_CONSENSUS and export.panel == row.labelling_panel
    assert row.results["pairs_labelled"] == export.counts["train"] > 0
    run = TrainingRun.objects.get(pk=row.training_run_id)
    assert run.status == JobStatus.SUCCEEDED and run.done == 2 == row.results["steps"]

    evaluation = EvaluationRun.objects.get(pk=row.evaluation_id)
    assert evaluation.judge == row.evaluation_judge and evaluation.training_run == run
    assert list(evaluation.labelling_judges.all()) == [labeller] and evaluation.labels_source == "judges"
    graders = [(j["judge"], j["labelled_training_data"]) for j in row.results["judges"]]
    assert graders == [(row.evaluation_judge.name, False), (labeller.name, True)]
    for role in ("candidate", "baseline"):
        assert row.results["profiles"][role]["words"]["n"] == row.results["valid"][role]["valid"]

    page = client_for(admin_user).get(f"/training/rounds/{row.pk}/").content.decode()
    assert "yes: not independent" in page and "no: independent" in page and "hx-trigger" not in page
    assert f"/training/evaluations/{evaluation.pk}/" in page and f"/training/runs/{run.pk}/" in page
