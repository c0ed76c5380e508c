"""Background jobs: created in the web request, run by a Celery worker, watched live in the admin."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from .models import FINISHED_STATUSES, Job, JobStatus


class JobCancelled(Exception):
    pass


def enqueue(task, job: Job) -> Job:
    # After commit, so the worker never looks for a job row that is not there yet.
    transaction.on_commit(lambda: task.delay(job.pk))
    return job


def create_job(kind: str, params: dict | None = None, user=None, total: int = 0) -> Job:
    return Job.objects.create(kind=kind, params=params or {}, created_by=user, total=total)


class JobProgress:
    """What a task uses to report progress; raises JobCancelled once an admin asked to stop."""

    def __init__(self, job: Job):
        self.job = job

    def start(self, total: int | None = None) -> None:
        fields = {"status": JobStatus.RUNNING, "started_at": timezone.now(), "heartbeat_at": timezone.now()}
        if total is not None:
            fields["total"] = total
        self._update(**fields)

    def advance(self, done: int, message: str = "", **stats) -> None:
        fields = {"done": done, "message": message, "heartbeat_at": timezone.now()}
        if stats:
            fields["stats"] = {**self.job.stats, **stats}
        self._update(**fields)
        if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
            raise JobCancelled

    def finish(self, status: str, message: str = "", error: str = "") -> None:
        self._update(status=status, message=message, error=error, finished_at=timezone.now())

    def _update(self, **fields) -> None:
        Job.objects.filter(pk=self.job.pk).update(**fields)
        for name, value in fields.items():
            setattr(self.job, name, value)


def run_job(job_id: int, work) -> None:
    """Run work(job, progress) and record how it ended; a job already finished is left alone."""
    job = Job.objects.get(pk=job_id)
    if job.status in FINISHED_STATUSES:
        return
    progress = JobProgress(job)
    if job.cancel_requested:
        progress.finish(JobStatus.CANCELLED, "cancelled before it started")
        return
    progress.start()
    try:
        message = work(job, progress) or ""
    except JobCancelled:
        progress.finish(JobStatus.CANCELLED, "cancelled by an admin")
    except Exception as exc:
        progress.finish(JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
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


def fail_queued_job(job_id: int, reason: str) -> None:
    Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.FAILED, error=reason, finished_at=timezone.now()
    )
