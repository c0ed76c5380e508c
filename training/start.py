"""Starting training work from the admin or a command: create the row, send its task after the commit.

The only module of ``training`` that imports ``training.tasks``; the tasks import the logic they run
(``training.runs``, ``training.evaluation``), and the logic imports neither.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from annotation.models import DatasetExport, Generator, Judge

from .grading import create_evaluation
from .models import EvaluationRun, Round, TrainingRun
from .round import Preset, create_round
from .runs import TrainingError, build_config, create_run, resumption
from .tasks import evaluate_task, merge_adapter_task, run_round_task, run_training_task


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


def start_evaluation(judge: Judge | None = None, *, queue: bool = True, **options: Any) -> EvaluationRun:
    """Create the evaluation (``training.grading.create_evaluation``: the independent judge when ``judge`` is
    None, a labelling judge refused unless ``allow_same_judge``) and enqueue it; ``queue=False`` only creates it."""
    with transaction.atomic():
        evaluation = create_evaluation(judge, **options)
        if queue:
            evaluate_task.delay_on_commit(evaluation.pk)
    return evaluation


def start_round(preset: Preset, generator: Generator | None = None, *, name: str = "", user=None,
                queue: bool = True) -> Round:
    """Create a round (``training.round``) and send it to a training worker; ``queue=False`` only creates it,
    for a caller that runs ``run_round`` itself (``manage.py run_round`` without ``--queue``)."""
    with transaction.atomic():
        row = create_round(preset, generator, name, user)
        if queue:
            run_round_task.delay_on_commit(row.pk)
    return row
