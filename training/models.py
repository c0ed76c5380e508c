"""Fine-tuning runs and evaluations. The training code itself lives in training/ml and knows no Django."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models import FINISHED_STATUSES, Campaign, DatasetExport, Generator, Judge, JobStatus


class TrainingRunQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])


class TrainingRun(models.Model):
    name = models.CharField(max_length=100, unique=True)
    export = models.ForeignKey(DatasetExport, on_delete=models.PROTECT, related_name="training_runs")
    base_model = models.CharField(max_length=300, default="default")
    # The full training.ml.dpo.TrainConfig as a dict, saved as submitted so a run can be reproduced.
    config = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    latest_metrics = models.JSONField(default=dict, blank=True)
    output_dir = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    resumed_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A live worker touches this every few seconds; a stale one means the worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    objects = TrainingRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="training_status_valid"),
            models.CheckConstraint(condition=Q(step__lte=models.F("total_steps")) | Q(total_steps=0),
                                   name="training_step_within_total"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def percent(self) -> int:
        return int(100 * self.step / self.total_steps) if self.total_steps else 0


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


class EvaluationRun(models.Model):
    """Tuned vs base (and optionally a third model) on held-out samples, judged in both orders."""

    name = models.CharField(max_length=100, unique=True)
    training_run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="evaluations")
    candidate = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="+")
    baseline = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="+")
    third = models.ForeignKey(Generator, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    judge = models.ForeignKey(Judge, on_delete=models.PROTECT, related_name="evaluations")
    sample_limit = models.PositiveIntegerField(default=20)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    # {"baseline": {"wins":..,"ties":..,"losses":..,"win_rate":..,"ci":[lo,hi]}, "valid_rate": {...}}
    results = models.JSONField(default=dict, blank=True)
    expert_campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~Q(candidate=models.F("baseline")), name="evaluation_distinct_models"),
        ]

    def __str__(self) -> str:
        return self.name
