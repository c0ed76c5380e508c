"""Which judge grades an evaluation: the labelling judge is refused (start, form, task) unless overridden loudly;
every judge's win rate and each model's length and copy share are on the page."""

from __future__ import annotations

import pytest

from annotation.models import ExportPolicy, Generator, JobStatus, JudgePanel, Split
from tests.labels_factory import World, profile_text
from tests.training_factory import make_export
from training.evaluation import mean_interval, profile_figures, run_evaluation, summarise
from training.models import EvaluationRun
from training.grading import provenance
from training.runs import TrainingError, build_config, create_run
from training.start import start_evaluation

pytestmark = [pytest.mark.urls("tests.training_factory")]


def labelled_run(tmp_path, policy=ExportPolicy.JUDGE_CONSENSUS, judges_used=("labeller",)):
    export = make_export(tmp_path / "export", name=f"export {tmp_path.name}")
    export.policy = policy
    export.counts = {**export.counts, "judges_used": list(judges_used)}
    export.save()
    run = create_run(export, build_config(export, {"max_steps": 1}), f"run {tmp_path.name}")
    run.status = JobStatus.SUCCEEDED
    run.save()
    return run


@pytest.fixture
def world_with_run(db, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = World()
    world.sample(split=Split.HELDOUT)
    labeller, other = world.judge("labeller"), world.judge("independent")
    run = labelled_run(tmp_path)
    base = world.generator("base")
    tuned = Generator.objects.create(name="tuned", source_run=run)
    return world, run, labeller, other, base, tuned


def test_provenance_follows_run_export_policy_and_judges(world_with_run, tmp_path):
    world, run, labeller, other, *_ = world_with_run
    labelled = provenance(run)
    assert labelled.source == "judges" and labelled.judges == (labeller,)
    assert "judges: labeller" in labelled.describe()
    experts = labelled_run(tmp_path / "2", policy=ExportPolicy.EXPERT)
    assert provenance(experts).source == "experts" and provenance(experts).judges == ()
    # An export from before judges_used was recorded: its panel's judges.
    old = labelled_run(tmp_path / "3")
    panel = JudgePanel.objects.create(name="p")
    panel.judges.set([other])
    old.export.counts, old.export.panel = {"train": 6}, panel
    old.export.save()
    assert provenance(old).judges == (other,)
    assert provenance(None).source == "unknown"


def test_the_labelling_judge_is_refused_unless_overridden(world_with_run):
    world, run, labeller, other, base, tuned = world_with_run
    with pytest.raises(TrainingError, match="labelled this run's training data"):
        start_evaluation(labeller, candidate=tuned, baseline=base, queue=False)
    assert not EvaluationRun.objects.exists()

    independent = start_evaluation(other, candidate=tuned, baseline=base, queue=False)
    assert independent.training_run == run and independent.labels_source == "judges"
    assert list(independent.labelling_judges.all()) == [labeller] and not independent.graded_by_labelling_judge

    forced = start_evaluation(labeller, candidate=tuned, baseline=base, allow_same_judge=True, queue=False)
    assert forced.same_judge_allowed and forced.graded_by_labelling_judge


def test_without_an_independent_judge_the_default_says_what_to_add(world_with_run):
    world, run, labeller, other, base, tuned = world_with_run
    with pytest.raises(TrainingError, match="no independent judge.*Gemma"):
        start_evaluation(None, candidate=tuned, baseline=base, queue=False)


def test_the_task_refuses_a_labelling_judge_made_by_hand(world_with_run):
    world, run, labeller, other, base, tuned = world_with_run
    evaluation = EvaluationRun.objects.create(name="by hand", training_run=run, candidate=tuned, baseline=base,
                                              judge=labeller)
    assert run_evaluation(evaluation.pk) == JobStatus.FAILED
    evaluation.refresh_from_db()
    assert "labelled this run's training data" in evaluation.error
    assert not evaluation.sub_jobs().exists()  # refused before generating anything


def test_an_evaluation_whose_worker_shuts_down_ends_failed_at_once_saying_what_to_do(world_with_run, monkeypatch):
    world, run, labeller, other, base, tuned = world_with_run
    evaluation = EvaluationRun.objects.create(name="stopped", training_run=run, candidate=tuned, baseline=base,
                                              judge=other)

    def shut_down(*args):
        raise SystemExit(1)  # what a worker's cold shutdown raises in the task

    monkeypatch.setattr("training.evaluation.check_grader", shut_down)
    with pytest.raises(SystemExit):  # the worker goes on shutting down
        run_evaluation(evaluation.pk, worker="w@h")
    evaluation.refresh_from_db()
    assert evaluation.status == JobStatus.FAILED and evaluation.message == "the worker stopped"
    assert evaluation.error == ("The worker stopped during the evaluation run (SystemExit). Start it again: "
                                "generation fills in only what is missing.")


def test_the_admin_form_refuses_and_the_override_warns_on_the_page(world_with_run, client_for, admin_user,
                                                                  django_capture_on_commit_callbacks):
    world, run, labeller, other, base, tuned = world_with_run
    client = client_for(admin_user)
    form = {"candidate": tuned.pk, "baseline": base.pk, "judge": labeller.pk, "sample_limit": 5, "candidates": 1}
    page = client.post("/admin/training/evaluationrun/add/", form).content.decode()
    assert "labelled this run&#x27;s training data" in page and not EvaluationRun.objects.exists()

    with django_capture_on_commit_callbacks():
        response = client.post("/admin/training/evaluationrun/add/", {**form, "allow_same_judge": "on"})
    evaluation = EvaluationRun.objects.get()
    assert response.status_code == 302 and evaluation.same_judge_allowed
    page = client.get(f"/training/evaluations/{evaluation.pk}/").content.decode()
    assert "Not an independent evaluation" in page and 'id="same-judge-warning"' in page
    assert "Training data labelled by <strong>judges</strong>" in page and "<strong>labeller</strong>" in page

    EvaluationRun.objects.all().delete()
    with django_capture_on_commit_callbacks():
        client.post("/admin/training/evaluationrun/add/", {**form, "judge": other.pk})
    evaluation = EvaluationRun.objects.get()
    page = client.get(f"/training/evaluations/{evaluation.pk}/").content.decode()
    assert "Not an independent evaluation" not in page and evaluation.judge == other


def test_profile_figures_measure_length_competencies_and_copying(db):
    world = World()
    sample = world.sample(documents=1)
    abstract = "we study proteins with deep learning and show that folding can be predicted from sequence alone"
    copied = world.profile(sample, "tuned", f'Domain: "x"\n\nCompetencies:\n- Folding: {abstract}')
    own = world.profile(sample, "tuned", profile_text("Biology", "Proteins", "Sequences"))
    invalid = world.profile(sample, "tuned", abstract, valid=False)
    copied.competencies, own.competencies = [{"name": "Folding"}], [{"name": "Proteins"}, {"name": "Sequences"}]
    figures = profile_figures([copied, own, invalid], {sample.pk: [abstract]})
    assert figures["words"]["n"] == 2  # the invalid profile is not counted: the judges never saw it
    words_copied = len(abstract.split())
    assert figures["copy_share"]["mean"] == pytest.approx((words_copied / (words_copied + 4) + 0) / 2, abs=1e-4)
    assert figures["competencies"]["mean"] == 1.5


def test_mean_interval_has_n_and_no_interval_for_one_value():
    assert mean_interval([]) == {"n": 0, "mean": None, "ci": [None, None]}
    assert mean_interval([3.0]) == {"n": 1, "mean": 3.0, "ci": [None, None]}
    two = mean_interval([1.0, 3.0])
    assert two["mean"] == 2.0 and two["ci"][0] < 2.0 < two["ci"][1] and two["n"] == 2


def test_the_page_shows_every_judge_and_what_a_win_could_be_bought_with(world_with_run, client_for, admin_user):
    world, run, labeller, other, base, tuned = world_with_run
    figures = {"generator": "tuned", "words": mean_interval([40, 50]), "competencies": mean_interval([3, 5]),
               "copy_share": mean_interval([0.1, 0.3]), "copy_span_words": 8}
    versus = {"baseline": {"judged": summarise(["win"] * 9 + ["loss"]), "with_forfeits": summarise(["win"])}}
    labelled = {"baseline": {"judged": summarise(["win"] * 10), "with_forfeits": summarise(["win"])}}
    evaluation = EvaluationRun.objects.create(
        name="figures", training_run=run, candidate=tuned, baseline=base, judge=other, status=JobStatus.SUCCEEDED,
        labels_source="judges",
        results={"profiles": {"candidate": figures, "baseline": {**figures, "generator": "base"}},
                 "judges": [{"judge": "independent", "judge_id": other.pk, "labelled_training_data": False,
                             "versus": versus},
                            {"judge": "labeller", "judge_id": labeller.pk, "labelled_training_data": True,
                             "versus": labelled}]})
    page = client_for(admin_user).get(f"/training/evaluations/{evaluation.pk}/").content.decode()
    assert "What a win could be bought with" in page and "45.0" in page and "20%" in page
    assert "at least 8 consecutive words" in page
    assert "Win rate per judge" in page and "yes: not independent" in page and "(this evaluation's judge)" in page
    assert "90%" in page and "100%" in page


def scoring(name: str, model: str):
    from annotation.models import Judge, JudgeBackend, JudgeOrders

    return Judge.objects.create(name=name, backend=JudgeBackend.SCORING, model=model, orders=JudgeOrders.NONE)


def test_the_default_grader_is_a_scoring_judge_that_did_not_label_on_another_model(world_with_run, tmp_path):
    world, run, labeller, other, base, tuned = world_with_run
    smollm_labeller = scoring("smollm pmi", "default")
    smollm_other = scoring("smollm pmi, other settings", "default")
    gemma = scoring("gemma pmi", "gemma")
    export = run.export
    export.counts = {**export.counts, "judges_used": ["smollm pmi"]}
    export.save()
    evaluation = start_evaluation(None, candidate=tuned, baseline=base, queue=False)
    # Not the labeller; of the others, the one on another model than the labeller's.
    assert evaluation.judge == gemma and list(evaluation.labelling_judges.all()) == [smollm_labeller]
    gemma.backend, gemma.orders = "local", "both"  # no scoring judge on another model left
    gemma.save()
    assert start_evaluation(None, candidate=tuned, baseline=base, queue=False).judge == smollm_other
