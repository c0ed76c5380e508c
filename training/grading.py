"""Who labelled a tuned model's training data, and which judge may grade it.

A judge that labelled the pairs a model was tuned on is not evidence about that model: DPO moved the model
towards what that judge prefers, so the judge's win rate measures how well training fitted it. The chain is
evaluation → training run → export (a frozen snapshot) → its policy and the judges whose verdicts could
decide it (``counts["judges_used"]``, written by the export; older exports: the panel, else every judge).

An evaluation is graded by default by an independent judge: a scoring judge (PMI, ``training.ml.scoring``)
that did not label the data, preferring one on a model other than every labelling judge's (Gemma 3 270M,
another family than the SmolLM2 the round's labels come from). Grading with a labelling judge is refused
unless the caller overrides it, and the evaluation page then says so in red.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from annotation.models import DatasetExport, ExportPolicy, Generator, Judge, JudgeBackend, Sample

from .models import EvaluationRun, TrainingRun
from .runs import TrainingError, base_generator, tuned_generator, unique_name



@dataclass(frozen=True)
class Provenance:
    """Where a run's training labels came from: ``source`` is "experts", "judges", "experts and judges" or
    "unknown" (no training run: a candidate generator of unknown origin)."""

    source: str
    judges: tuple[Judge, ...] = ()

    def describe(self) -> str:
        names = ", ".join(j.name for j in self.judges)
        if self.source == "unknown":
            return "unknown (the candidate is not linked to a training run)"
        return f"{self.source}" + (f": {names}" if names else "")


def labelling_judges(export: DatasetExport) -> tuple[Judge, ...]:
    """The judges whose verdicts could label the export's pairs."""
    if export.policy == ExportPolicy.EXPERT:
        return ()
    used = (export.counts or {}).get("judges_used")
    if used is not None:
        return tuple(Judge.objects.filter(name__in=used).order_by("name"))
    if export.panel_id:
        return tuple(export.panel.judges.order_by("name"))
    return tuple(Judge.objects.filter(verdicts__isnull=False).distinct().order_by("name"))


def provenance(training_run) -> Provenance:
    if training_run is None:
        return Provenance("unknown")
    export = training_run.export
    judges = labelling_judges(export)
    if export.policy == ExportPolicy.EXPERT:
        return Provenance("experts")
    if export.policy == ExportPolicy.EXPERT_OVERRIDES:
        return Provenance("experts and judges", judges)
    return Provenance("judges", judges)


def independent_judge(labelled_by: Provenance) -> Judge:
    """The default grader: a scoring judge that did not label the data, on another model when there is one."""
    excluded = {j.pk for j in labelled_by.judges}
    models = {j.model for j in labelled_by.judges}
    scoring = Judge.objects.filter(backend=JudgeBackend.SCORING).order_by("pk")
    candidates = [j for j in scoring if j.pk not in excluded]
    if not candidates:
        raise TrainingError(
            "no independent judge: every scoring judge labelled this run's training data (or there is none). "
            "Add a scoring judge on Gemma 3 270M (installed by `make install`) in the Judge admin, or choose "
            "a judge explicitly.")
    other_model = [j for j in candidates if j.model not in models]
    return (other_model or candidates)[0]


def check_grader(judge: Judge, labelled_by: Provenance, allow_same_judge: bool) -> None:
    """Refuse a judge that labelled the training data, unless explicitly allowed."""
    if judge.pk in {j.pk for j in labelled_by.judges} and not allow_same_judge:
        raise TrainingError(
            f"judge {judge.name!r} labelled this run's training data ({labelled_by.describe()}): its win rate "
            "measures how well training fitted it, not whether the model got better. Choose an independent judge "
            "(leave the judge empty for the default), or tick \"grade with the labelling judge anyway\" to do it "
            "on purpose; the page will then warn that the figure is not independent.")


def create_evaluation(judge: Judge | None = None, *, training_run: TrainingRun | None = None,
                      candidate: Generator | None = None, baseline: Generator | None = None,
                      third: Generator | None = None, sample_limit: int = 20, candidates: int = 1, name: str = "",
                      allow_same_judge: bool = False, user=None) -> EvaluationRun:
    """The evaluation row (making the tuned and base generators of a run if not given), with who labelled the
    training data. ``judge=None`` grades with the independent judge; a labelling judge is refused unless
    ``allow_same_judge``."""
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
    return evaluation
