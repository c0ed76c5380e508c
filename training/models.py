"""Fine-tuning runs and evaluations. The training code itself lives in training/ml and knows no Django."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from annotation.models import FINISHED_STATUSES, Campaign, DatasetExport, Generator, Judge, JobQuerySet, JobStatus


class LivenessQuerySet(JobQuerySet):
    """Shared by training and evaluation runs: both are long tasks watched through a heartbeat, like jobs
    (``active()``, ``stale()``; annotation.jobs.liveness)."""


class TrainingRun(models.Model):
    name = models.CharField(max_length=100, unique=True)
    export = models.ForeignKey(DatasetExport, on_delete=models.PROTECT, related_name="training_runs")
    base_model = models.CharField(max_length=300, default="default")
    # The run's config as `python -m training.ml.dpo --config` reads it, saved as submitted so it can be run again.
    config = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    latest_metrics = models.JSONField(default=dict, blank=True)
    output_dir = models.CharField(max_length=500, blank=True)
    # One line on where the run stands ("step 40 of 200", "cancelled after step 3 …"); error holds failures.
    message = models.TextField(blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    # A resumed run is a new row that starts from the last checkpoint of this one (which keeps its error).
    resumed_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="resumptions")
    # The Celery worker (hostname) running it: a worker that restarts fails the runs it left behind.
    worker = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A live worker touches this every few seconds; a stale one means the worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    objects = LivenessQuerySet.as_manager()

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
        if self.status == JobStatus.SUCCEEDED:
            return 100
        return int(100 * self.step / self.total_steps) if self.total_steps else 0

    @property
    def is_resumable(self) -> bool:
        return self.status in (JobStatus.FAILED, JobStatus.CANCELLED)

    def elapsed_seconds(self) -> float:
        if not self.started_at:
            return 0.0
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()


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
    # Profiles per held-out sample and model; profile i of the tuned model meets profile i of the others.
    candidates = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    # {"baseline": {"wins":..,"ties":..,"losses":..,"win_rate":..,"ci":[lo,hi]}, "valid_rate": {...}}
    results = models.JSONField(default=dict, blank=True)
    expert_campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL)
    message = models.TextField(blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    objects = LivenessQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~Q(candidate=models.F("baseline")), name="evaluation_distinct_models"),
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="evaluation_status_valid"),
            models.CheckConstraint(condition=Q(candidates__gte=1), name="evaluation_candidates_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES
