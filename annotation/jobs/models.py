"""Background jobs (generation, judging, export) and their states, watched through a heartbeat."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def stale_after_s() -> float:
    """A running row silent this long has lost its worker (nine missed heartbeats by default)."""
    return float(getattr(settings, "WORKER_STALE_AFTER_S", 45))


def stale_cutoff(now=None):
    return (now or timezone.now()) - timedelta(seconds=stale_after_s())


class JobKind(models.TextChoices):
    GENERATE = "generate", "Generate profiles"
    JUDGE = "judge", "Judge comparisons"
    EXPORT = "export", "Export dataset"
    IMPORT = "import", "Import"
    PING = "ping", "Worker check"


class JobQuerySet(models.QuerySet):
    """Shared by jobs, training runs and evaluations: work a worker runs, watched through a heartbeat."""

    def active(self):
        return self.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])

    def stale(self, now=None):
        """Running rows whose worker stopped sending heartbeats (annotation.jobs.liveness)."""
        cutoff = stale_cutoff(now)
        return self.filter(status=JobStatus.RUNNING).filter(
            Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
        )


class Job(models.Model):
    """A long piece of work run by a Celery worker, with progress the admin watches live."""

    kind = models.CharField(max_length=10, choices=JobKind.choices)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    params = models.JSONField(default=dict, blank=True)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    # Rates the progress page shows, e.g. {"tokens": 1234} for generation.
    stats = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A live worker touches this every few seconds (annotation.jobs.liveness); a stale one means the worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The Celery worker (hostname) running it: a worker that restarts fails the jobs it left behind.
    worker = models.CharField(max_length=200, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="job_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else (100 if self.is_finished else 0)

    def elapsed_seconds(self) -> float:
        if not self.started_at:
            return 0.0
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()

    def eta_seconds(self) -> float | None:
        """Remaining time at the rate so far; None until there is a rate to go on."""
        if self.is_finished or not self.done or not self.total:
            return None
        return self.elapsed_seconds() / self.done * (self.total - self.done)

    def tokens_per_second(self) -> float | None:
        elapsed = self.elapsed_seconds()
        tokens = self.stats.get("tokens")
        return tokens / elapsed if tokens and elapsed > 0 else None

