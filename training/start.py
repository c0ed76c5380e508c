"""Starting training work from the admin or a command: create the row, send its task after the commit.

The only module of ``training`` that imports ``training.tasks``; the tasks import the logic they run
(``training.runs``, ``training.evaluation``), and the logic imports neither.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from annotation.models import DatasetExport, Generator, Judge, Sample

from .models import EvaluationRun, TrainingRun
from .provenance import check_grader, independent_judge, provenance
from .runs import TrainingError, base_generator, build_config, create_run, resumption, tuned_generator, unique_name
from .tasks import evaluate_task, merge_adapter_task, run_training_task


def start_training(export: DatasetExport, values: dict[str, Any] | None = None, *, name: str = "",
                   use_test_split: bool = False, user=None, queue: bool = True) -> TrainingRun:
    """Validate, create and enqueue a run; what the admin form and ``manage.py start_training`` call.

    ``queue=False`` only creates it, for a caller that runs ``run_training`` itself.
    """
    try:
        config = build_config(export, values or {}, use_test_split)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    run = create_run(export, config, name, user)
    if queue:
        run_training_task.delay_on_commit(run.pk)
    return run


def resume_training(run: TrainingRun, user=None) -> TrainingRun:
    """A new run that continues ``run`` from its last complete checkpoint, queued for a training worker."""
    new = resumption(run, user)
    run_training_task.delay_on_commit(new.pk)
    return new


def start_merge(run: TrainingRun) -> None:
    """Write base model + adapter as one standalone model, in a training worker."""
    merge_adapter_task.delay_on_commit(run.pk)


def start_evaluation(judge: Judge | None = None, *, training_run: TrainingRun | None = None,
                     candidate: Generator | None = None, baseline: Generator | None = None,
                     third: Generator | None = None, sample_limit: int = 20, candidates: int = 1, name: str = "",
                     allow_same_judge: bool = False, user=None, queue: bool = True) -> EvaluationRun:
    """Create the evaluation (making the tuned and base generators of a run if not given) and enqueue it.

    ``judge=None`` grades with the independent judge (``training.provenance.independent_judge``); a judge that
    labelled the run's training data is refused unless ``allow_same_judge``. ``queue=False`` only creates it.
    """
    if not Sample.objects.heldout()[:sample_limit].exists():
        raise TrainingError("there are no held-out samples to evaluate on; import documents with a held-out fraction")
    if candidate is None and training_run is None:
        raise TrainingError("choose a training run or a candidate generator")
    if baseline is None:
        if training_run is None:
            raise TrainingError("choose a baseline generator")
        baseline = base_generator(training_run)
    if candidate is None:
        # The tuned model decodes exactly as the baseline does, so the adapter is the only difference.
        candidate = tuned_generator(training_run, like=baseline)
    training_run = training_run or candidate.source_run
    labelled_by = provenance(training_run)
    judge = judge or independent_judge(labelled_by)
    check_grader(judge, labelled_by, allow_same_judge)
    models = [candidate, baseline] + ([third] if third else [])
    if len({g.pk for g in models}) != len(models):
        raise TrainingError("the candidate, baseline and third model must be three different generators")
    with transaction.atomic():
        evaluation = EvaluationRun.objects.create(
            name=unique_name(name or f"{candidate.name} vs {baseline.name} · {timezone.now():%Y-%m-%d %H:%M}",
                             EvaluationRun),
            training_run=training_run, candidate=candidate, baseline=baseline, third=third,
            judge=judge, sample_limit=sample_limit, candidates=candidates, created_by=user,
            labels_source=labelled_by.source, same_judge_allowed=allow_same_judge,
            message="waiting for a training worker",
        )
        evaluation.labelling_judges.set(labelled_by.judges)
        if queue:
            evaluate_task.delay_on_commit(evaluation.pk)
    return evaluation
