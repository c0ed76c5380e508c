"""Fine-tuning runs, their logged steps, and evaluations. The training code itself lives in training/ml and knows
no Django."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from annotation.models import Campaign, DatasetExport, Generator, Job, JobStatus, Judge, Work


class TrainingRun(Work):
    """A DPO + LoRA run on an export snapshot; ``done`` of ``total`` are optimiser steps."""

    name = models.CharField(max_length=100, unique=True)
    export = models.ForeignKey(DatasetExport, on_delete=models.PROTECT, related_name="training_runs")
    base_model = models.CharField(max_length=300, default="default")
    # The run's config as `python -m training.ml.dpo --config` reads it, saved as submitted so it can be run again.
    config = models.JSONField(default=dict)
    latest_metrics = models.JSONField(default=dict, blank=True)
    output_dir = models.CharField(max_length=500, blank=True)
    # A resumed run is a new row that starts from the last checkpoint of this one (which keeps its error).
    resumed_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="resumptions")

    stops_when = "after the current step, with a checkpoint"
    unit = "step"

    class Meta(Work.Meta):
        constraints = [
            *Work.Meta.constraints,
            models.CheckConstraint(condition=Q(done__lte=models.F("total")) | Q(total=0),
                                   name="training_step_within_total"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_resumable(self) -> bool:
        return self.status in (JobStatus.FAILED, JobStatus.CANCELLED)

    def where(self) -> str:
        return f" at step {self.done} of {self.total}"

    def retry_hint(self) -> str:
        return "Resume the run to continue from its last checkpoint."


class TrainingLogEntry(models.Model):
    """One logging step of a run: the curve the run page draws."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="log_entries")
    step = models.PositiveIntegerField()
    epoch = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    reward_accuracy = models.FloatField(null=True, blank=True)
    reward_margin = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    elapsed_s = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="training_log_step_unique")]


class EvaluationRun(Work):
    """Tuned vs base (and optionally a third model) on held-out samples, judged in both orders."""

    name = models.CharField(max_length=100, unique=True)
    training_run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="evaluations")
    candidate = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="+")
    baseline = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="+")
    third = models.ForeignKey(Generator, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    judge = models.ForeignKey(Judge, on_delete=models.PROTECT, related_name="evaluations")
    sample_limit = models.PositiveIntegerField(default=20)
    # Profiles per held-out sample and model; profile i of the tuned model meets profile i of the others.
    candidates = models.PositiveSmallIntegerField(default=1)
    # {"baseline": {"wins":..,"ties":..,"losses":..,"win_rate":..,"ci":[lo,hi]}, "valid_rate": {...}}
    results = models.JSONField(default=dict, blank=True)
    expert_campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL)

    stops_when = "after the current batch"

    class Meta(Work.Meta):
        constraints = [
            *Work.Meta.constraints,
            models.CheckConstraint(condition=~Q(candidate=models.F("baseline")), name="evaluation_distinct_models"),
            models.CheckConstraint(condition=Q(candidates__gte=1), name="evaluation_candidates_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def sub_jobs(self):
        """The generation and judging jobs it ran, each visible on the jobs page."""
        return Job.objects.filter(params__evaluation_id=self.pk)

    def request_cancel(self) -> str:
        said = super().request_cancel()
        # The generation or judging job in progress stops after its current batch.
        self.sub_jobs().active().update(cancel_requested=True)
        return said

    def retry_hint(self) -> str:
        return "Start it again: generation fills in only what is missing."
