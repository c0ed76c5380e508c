"""Running work in a worker: ``WorkRunner``, the one lifecycle of a job, a training run, an evaluation, a round.

Work runs at most once: ``WorkRunner.start`` claims the row (queued → running, atomically, with the worker's
name), and a message for a row that is not queued any more (a duplicate, or the broker handing a dead worker's
message out again) does nothing. While the work runs a heartbeat thread proves the worker alive; if the worker
dies, ``annotation.jobs.liveness`` fails the row with the reason, and nothing the work writes afterwards can
revive it. Background jobs are created in the web request (``create_job``) and run with ``run_job``.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, nullcontext

from django.core.management import CommandError
from django.utils import timezone

from ..models import Job, JobStatus, Work
from .eta import add_point
from .liveness import Heartbeat

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised by the work once an admin asked it to stop: it ends as cancelled, saying ``message``."""

    def __init__(self, message: str = "cancelled by an admin"):
        super().__init__(message)
        self.message = message


class Lost(Exception):
    """``row`` is no longer this worker's to write: it was marked failed behind its back (its heartbeat went
    stale, so the watchdog took it for dead) or deleted. The work stops; the row keeps the watchdog's error."""

    def __init__(self, row: Work):
        super().__init__(f"{row._meta.verbose_name} {row.pk} was marked failed (or deleted) while this worker "
                         "was running it")
        self.row = row


def create_job(kind: str, params: dict | None = None, user=None, total: int = 0) -> Job:
    return Job.objects.create(kind=kind, params=params or {}, created_by=user, total=total)


class JobProgress:
    """What a task uses to report progress; raises Cancelled once an admin asked to stop, and Lost once the
    job was failed (or deleted) behind its back."""

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
            raise Cancelled

    def within(self, done: float, message: str = "", **stats) -> None:
        """Progress inside a step (a batch half decoded): ``done`` as a fraction of items goes into the rate and
        the ETA (``progress_points``), the row's whole ``done`` stays as it is."""
        stats = {**self.job.stats, **stats}
        point = add_point(self.job.progress_points, time.time(), done, *self.job.counted_with({"stats": stats}))
        self._update(progress_points=point, stats=stats, message=message, heartbeat_at=timezone.now())

    def finish(self, status: str, message: str = "", error: str = "") -> None:
        finish(self.job, status, message, error)

    def _update(self, **fields) -> None:
        if not self.job.save_progress(**fields):
            raise Lost(self.job)


def _current_worker() -> str:
    """The hostname of the Celery worker running the current task; "" outside a worker."""
    from celery import current_task

    request = getattr(current_task, "request", None) if current_task else None
    return getattr(request, "hostname", None) or ""


def finish(row: Work, status: str, message: str = "", error: str = "", **fields) -> bool:
    """End the row as ``status``; False (and a warning) when it had already ended, e.g. failed by the watchdog."""
    if row.finish(status, message, error, **fields):
        return True
    logger.warning("%s %s had already ended (%s) when it finished as %s", row._meta.verbose_name, row.pk,
                   type(row).objects.filter(pk=row.pk).values_list("status", flat=True).first(), status)
    return False


class WorkRunner:
    """The one lifecycle of a ``Work`` row in a worker: a subclass's ``run()`` is the work, the rest is here.

    ``start(pk)`` claims the row (one that is not queued is left alone), keeps its heartbeat while ``run()``
    works, and records how it ended: ``run()``'s message as succeeded, ``Cancelled`` as cancelled, an error as
    failed with its text, the worker shutting down as failed with what to do next. ``Lost`` leaves the row as
    the watchdog failed it. ``start`` returns the final status (the row's own when it was not queued).
    """

    model: type[Work]
    starting = ""  # the claimed row's message
    failed_message = "failed"
    # A failure propagates once recorded: a job's caller (a Celery task's log, an evaluation) hears of it.
    reraise = False

    def __init__(self, row: Work):
        self.row = row
        self.log = logger

    @classmethod
    def start(cls, pk: int, worker: str = "", **kwargs) -> str:
        row = cls.model.claim(pk, worker, message=cls.starting)
        if row is None:
            status = cls.model.objects.filter(pk=pk).values_list("status", flat=True).first()
            logger.info("%s %s is %s, not queued: nothing to do", cls.model._meta.verbose_name, pk, status or "gone")
            return status or "missing"
        return cls(row, **kwargs).run_to_end()

    def run(self) -> str:
        """The work; returns the message it succeeded with."""
        raise NotImplementedError

    def running(self):
        """What surrounds the work besides the heartbeat (a log file, freeing memory afterwards)."""
        return nullcontext()

    def ending(self, status: str) -> dict:
        """Fields written with the ending besides status and messages (what the work gathered)."""
        return {}

    def stopped(self, exc: BaseException) -> tuple[str, str]:
        """The message and error of a row whose worker shut down mid-work."""
        noun, hint = self.model._meta.verbose_name, self.row.retry_hint()
        return "the worker stopped", f"The worker stopped during the {noun} ({type(exc).__name__}). {hint}"

    def finish(self, status: str, message: str = "", error: str = "") -> None:
        finish(self.row, status, message, error, **self.ending(status))

    def run_to_end(self) -> str:
        with ExitStack() as stack:  # the ending is recorded while the log and the heartbeat are still on
            try:
                stack.enter_context(self.running())
                stack.enter_context(Heartbeat(self.model, self.row.pk))
                message = self.run() or ""
            except Cancelled as stop:
                return self._end(JobStatus.CANCELLED, stop.message)
            except Exception as exc:
                self._failed(exc)
                if self.reraise:
                    raise
                return JobStatus.FAILED
            except BaseException as exc:  # the worker is shutting down mid-work: say so, then let it go
                self._end(JobStatus.FAILED, *self.stopped(exc))
                raise
            return self._end(JobStatus.SUCCEEDED, message)

    def _failed(self, exc: Exception) -> None:
        noun = self.model._meta.verbose_name
        if isinstance(exc, Lost) and exc.row == self.row:  # it keeps the error it was failed with
            self.log.warning("%s %s was taken away while running (marked failed or deleted); stopped", noun,
                             self.row.pk)
            return
        if not self.reraise:  # (a re-raised one is logged by whoever hears of it)
            self.log.exception("%s %s failed", noun, self.row.pk)
        self._end(JobStatus.FAILED, self.failed_message, error=f"{type(exc).__name__}: {exc}")

    def _end(self, status: str, message: str = "", error: str = "") -> str:
        self.finish(status, message, error)
        return status


class _JobRunner(WorkRunner):
    model = Job
    failed_message = ""
    reraise = True

    def __init__(self, job: Job, work):
        super().__init__(job)
        self.work = work

    def run(self) -> str:
        return self.work(self.row, JobProgress(self.row))


def run_job(job_id: int, work, worker: str = "") -> str:
    """Claim the job and run work(job, progress) to its end (``WorkRunner``); a failure is re-raised once
    recorded. A job that is not queued (finished, cancelled, or running in some worker, alive or dead) is left
    alone."""
    return _JobRunner.start(job_id, worker or _current_worker(), work=work)


def follow_in(command, job: Job, no_wait: bool = False) -> None:
    """What a management command does once it queued a job: return at once (``--no-wait``), or show the job's
    progress until it ends and say how it ended (a CommandError unless it succeeded)."""
    if no_wait:
        return
    job = follow(job, command.stderr)
    if job.status != JobStatus.SUCCEEDED:
        raise CommandError(f"job #{job.pk} {job.status}: {job.error or job.message}")
    command.stdout.write(command.style.SUCCESS(job.message))


def follow(job: Job, stream, poll_s: float = 0.5) -> Job:
    """Show a job's progress as a terminal progress bar until it ends; used by the management commands."""
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
