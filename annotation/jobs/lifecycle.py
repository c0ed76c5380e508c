"""Background jobs: created in the web request, run by a Celery worker, watched live in the admin.

A job runs at most once: ``run_job`` claims it (queued → running, atomically, with the worker's name), and a
message for a job that is not queued any more (a duplicate, or the broker handing a dead worker's message out
again) does nothing. While the work runs a heartbeat thread proves the worker alive; if the worker dies,
``annotation.jobs.liveness`` fails the job with the reason, and nothing the work writes afterwards can revive it.
"""

from __future__ import annotations

import logging
import time

from django.utils import timezone

from ..models import Job, JobStatus
from .eta import add_point
from .liveness import Heartbeat

logger = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


class JobLost(Exception):
    """The job is no longer this worker's to write: it was marked failed behind its back (its heartbeat went
    stale, so the watchdog took it for dead) or deleted. The work stops; the job keeps the watchdog's error."""


def create_job(kind: str, params: dict | None = None, user=None, total: int = 0) -> Job:
    return Job.objects.create(kind=kind, params=params or {}, created_by=user, total=total)


class JobProgress:
    """What a task uses to report progress; raises JobCancelled once an admin asked to stop, and JobLost
    once the job was failed (or deleted) behind its back."""

    def __init__(self, job: Job):
        self.job = job

    def start(self, total: int | None = None) -> None:
        fields = {"status": JobStatus.RUNNING, "started_at": timezone.now(), "heartbeat_at": timezone.now()}
        if total is not None:
            fields["total"] = total
        self._update(**fields)

    def expect(self, total: int) -> None:
        """The total has grown (a judging job learns it sample by sample while generation goes on)."""
        self._update(total=total, heartbeat_at=timezone.now())

    def advance(self, done: int, message: str = "", **stats) -> None:
        fields = {"done": done, "message": message, "heartbeat_at": timezone.now()}
        if stats:
            fields["stats"] = {**self.job.stats, **stats}
        self._update(**fields)
        if self.job.cancel_wanted():
            raise JobCancelled

    def within(self, done: float, message: str = "", **stats) -> None:
        """Progress inside a step (a batch half decoded): ``done`` as a fraction of items goes into the rate and
        the ETA (``progress_points``), the row's whole ``done`` stays as it is."""
        stats = {**self.job.stats, **stats}
        point = add_point(self.job.progress_points, time.time(), done, *self.job.counted_with({"stats": stats}))
        self._update(progress_points=point, stats=stats, message=message, heartbeat_at=timezone.now())

    def finish(self, status: str, message: str = "", error: str = "") -> None:
        if not self.job.finish(status, message, error):
            logger.warning("job %s had already ended (%s) when it finished as %s", self.job.pk,
                           Job.objects.filter(pk=self.job.pk).values_list("status", flat=True).first(), status)

    def _update(self, **fields) -> None:
        if not self.job.save_progress(**fields):
            raise JobLost(f"job {self.job.pk} was marked failed (or deleted) while this worker was running it")


def _current_worker() -> str:
    """The hostname of the Celery worker running the current task; "" outside a worker."""
    from celery import current_task

    request = getattr(current_task, "request", None) if current_task else None
    return getattr(request, "hostname", None) or ""


def run_job(job_id: int, work, worker: str = "") -> None:
    """Claim the job, run work(job, progress) with a heartbeat, and record how it ended.

    A job that is not queued (finished, cancelled, or running in some worker, alive or dead) is left alone.
    """
    job = Job.claim(job_id, worker or _current_worker())
    if job is None:
        status = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
        logger.info("job %s is %s, not queued: nothing to do", job_id, status or "gone")
        return
    progress = JobProgress(job)
    with Heartbeat(Job, job.pk):
        try:
            message = work(job, progress) or ""
        except JobCancelled:
            progress.finish(JobStatus.CANCELLED, "cancelled by an admin")
        except JobLost:  # it keeps the error it was failed with; the caller (an evaluation, the task's log) hears
            logger.warning("job %s was taken away while running (marked failed or deleted); stopped", job.pk)
            raise
        except Exception as exc:
            progress.finish(JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        except BaseException as exc:  # the worker is shutting down mid-job: say so, then let it go
            progress.finish(JobStatus.FAILED, "the worker stopped",
                            error=f"The worker stopped during the job ({type(exc).__name__}). {job.retry_hint()}")
            raise
        else:
            progress.finish(JobStatus.SUCCEEDED, message)


def follow(job: Job, stream, poll_s: float = 0.5) -> Job:
    """Show a job's progress as a terminal progress bar until it ends; used by the management commands."""
    import time

    from tqdm import tqdm

    with tqdm(total=job.total or None, desc=job.get_kind_display(), unit="item", file=stream) as bar:
        while True:
            job.refresh_from_db()
            bar.total = job.total or bar.total
            bar.update(job.done - bar.n)
            bar.set_postfix_str(job.status if job.status != JobStatus.QUEUED else "waiting for a worker")
            if job.is_finished:
                return job
            time.sleep(poll_s)
