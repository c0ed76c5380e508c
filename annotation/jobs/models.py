"""Work a worker runs and an admin watches live (``Work``, the one lifecycle), and the background job."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.dispatch import Signal
from django.utils import timezone

from .eta import Estimate, add_point, estimate


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


# Sent when the watchdog has failed a row whose worker died (sender: its model; ``row``, ``error``): what
# depends on the row fails with it.
work_failed = Signal()


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


class WorkQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])

    def stale(self, now=None):
        """Running rows whose worker stopped sending heartbeats (annotation.jobs.liveness)."""
        cutoff = stale_cutoff(now)
        return self.filter(status=JobStatus.RUNNING).filter(
            Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
        )


class Work(models.Model):
    """Work a Celery worker runs and an admin watches live: a job, a training run, an evaluation.

    queued → running, claimed by one worker only (``claim``) → succeeded, failed or cancelled. While it runs,
    the worker's heartbeat keeps ``heartbeat_at`` fresh; a row that has ended is never written again
    (``save_progress``), so a row the watchdog failed stays failed, with its reason.
    """

    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    # Progress in the row's own units: samples, judgements, comparisons, training steps.
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    # One line on where it stands; ``error`` says what went wrong.
    message = models.TextField(blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    # The Celery worker (hostname) running it: a worker that restarts fails the rows it left behind.
    worker = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A live worker touches this every few seconds (annotation.jobs.liveness); a stale one means the worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # [unix time, done(, tokens)] at the latest progress updates (annotation.jobs.eta): the recent rate and ETA.
    progress_points = models.JSONField(default=list, blank=True, editable=False)

    objects = WorkQuerySet.as_manager()
    # What ``done`` counts, for the rate ("3.2 s per step").
    unit = "item"

    class Meta:
        abstract = True
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values),
                                   name="%(app_label)s_%(class)s_status_valid"),
        ]

    @classmethod
    def claim(cls, pk: int, worker: str, message: str = "") -> Work | None:
        """queued → running, atomically: a duplicate or redelivered message finds nothing to do, and a row asked
        to stop before it started ends as cancelled."""
        now = timezone.now()
        queued = cls.objects.filter(pk=pk, status=JobStatus.QUEUED)
        if queued.filter(cancel_requested=True).update(status=JobStatus.CANCELLED, finished_at=now, worker=worker,
                                                      message="cancelled before it started"):
            return None
        claimed = queued.update(status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker,
                                message=message)
        return cls.objects.get(pk=pk) if claimed else None

    def request_cancel(self) -> str:
        """A queued row is cancelled at once; a running one is asked to stop and stops at its next check."""
        rows = type(self).objects.filter(pk=self.pk)
        if rows.filter(status=JobStatus.QUEUED).update(status=JobStatus.CANCELLED, cancel_requested=True,
                                                       finished_at=timezone.now(),
                                                       message="cancelled before it started"):
            return "cancelled before it started"
        if rows.filter(status=JobStatus.RUNNING).update(cancel_requested=True):
            return f"asked to stop {self.stops_when}"
        return f"already {self.get_status_display().lower()}"

    def cancel_wanted(self) -> bool:
        """Whether an admin has asked it to stop (read afresh: the admin asks from another process)."""
        return type(self).objects.filter(pk=self.pk, cancel_requested=True).exists()

    def save_progress(self, **fields) -> bool:
        """Write ``fields`` unless the row has ended (or is gone); False then, and the work should stop."""
        if "done" in fields and "progress_points" not in fields:  # a caller may bring points of its own
            fields["progress_points"] = add_point(self.progress_points, time.time(), fields["done"],
                                                  *self.counted_with(fields))
        if not type(self).objects.filter(pk=self.pk).exclude(status__in=FINISHED_STATUSES).update(**fields):
            return False
        for name, value in fields.items():
            setattr(self, name, value)
        return True

    def finish(self, status: str, message: str = "", error: str = "", **fields) -> bool:
        return self.save_progress(status=status, message=message, error=error, finished_at=timezone.now(), **fields)

    # When a running row stops after it was asked to (request_cancel says so).
    stops_when = "after the current step"

    def where(self) -> str:
        """Where it was when its worker died, for the error: " with 3 of 10 done"."""
        return f" with {self.done} of {self.total} done" if self.total else ""

    def retry_hint(self) -> str:
        """What to do now that it failed, one sentence."""
        return "Start it again."

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def percent(self) -> int:
        if self.status == JobStatus.SUCCEEDED:
            return 100
        return int(100 * self.done / self.total) if self.total else 0

    def elapsed_seconds(self) -> float:
        if not self.started_at:
            return 0.0
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()

    def counted_with(self, fields: dict) -> tuple:
        """What else a progress point records besides ``done`` (generation: tokens)."""
        return ()

    def estimate(self) -> Estimate | None:
        """The recent rate and the time left, with its error; None when finished or with no rate yet."""
        if self.is_finished or not self.total:
            return None
        return estimate(self.progress_points, self.total, now=time.time())

    def rate_text(self) -> str:
        """The recent rate as people read it: "4.2 judgements/s" when fast, "35 s per sample" when slow."""
        found = self.estimate()
        if found is None:
            return ""
        if found.rate >= 1:
            return f"{found.rate:.1f} {self.unit}s/s"
        return f"{found.per_item_s:.0f} s per {self.unit}"


class Job(Work):
    """Generation, judging, an export or a worker check, with progress the admin watches live."""

    kind = models.CharField(max_length=10, choices=JobKind.choices)
    params = models.JSONField(default=dict, blank=True)
    # Rates the progress page shows, e.g. {"tokens": 1234} for generation.
    stats = models.JSONField(default=dict, blank=True)

    stops_when = "after the current batch"

    class Meta(Work.Meta):
        permissions = [("run_jobs", "Can run judges and generation, and cancel jobs")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def unit(self) -> str:
        return {JobKind.GENERATE: "sample", JobKind.JUDGE: "judgement", JobKind.EXPORT: "comparison"}.get(
            self.kind, "item")

    def counted_with(self, fields: dict) -> tuple:
        tokens = fields.get("stats", self.stats).get("tokens")
        return (tokens,) if tokens is not None else ()

    def tokens_per_second(self) -> float | None:
        """Tokens per second over the recent progress updates (over the whole run once it has ended)."""
        tokens = self.stats.get("tokens")
        points = [p for p in self.progress_points if len(p) > 2]
        if not self.is_finished and len(points) >= 2 and points[-1][0] > points[0][0]:
            return (points[-1][2] - points[0][2]) / (points[-1][0] - points[0][0])
        elapsed = self.elapsed_seconds()
        return tokens / elapsed if tokens and elapsed > 0 else None

    def retry_hint(self) -> str:
        evaluation = self.params.get("evaluation_id")
        if evaluation:
            return (f"It ran inside evaluation #{evaluation}, which failed with it: start that evaluation again "
                    "(generation and judging fill in only what is missing).")
        return {
            JobKind.GENERATE: "Start it again: generation fills in only what is missing.",
            JobKind.JUDGE: "Start it again: judging fills in only what is missing (stored verdicts are reused).",
            JobKind.EXPORT: "No snapshot was recorded: export again (“Export again as a new snapshot” in the export "
                            "list).",
        }.get(self.kind, "Start it again.")
