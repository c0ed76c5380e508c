"""Knowing when a worker died: heartbeats while a task is alive, and three ways to notice it stopped.

A worker killed mid-task (SIGKILL, out of memory, machine gone) cannot record anything, so its row would say
"running" forever (or until the broker hands the message out again, an hour later with Redis). Instead:

- ``Heartbeat`` touches the row every ``WORKER_HEARTBEAT_S`` from a thread, so a long generation batch, a
  slow step or a model load never looks like death;
- ``mark_stale`` fails running rows whose heartbeat is older than ``WORKER_STALE_AFTER_S``. It runs in a
  watchdog thread of every Celery worker (every ``WORKER_WATCHDOG_S``, so a dead worker is noticed by any
  other worker within a minute), whenever an admin opens a job or run page or list, and from
  ``manage.py check_training_runs`` (cron);
- ``mark_worker_restarted`` fails, at once, the rows a worker of the same name left behind when it starts
  again (the ``worker_ready`` signal), even when nothing else is running to notice.

Every model with ``status``, ``worker``, ``heartbeat_at``, ``started_at``, ``finished_at``, ``message``,
``error`` and a ``JobQuerySet`` manager (its ``stale()``) can be watched: ``watch(model, where=..., hint=...)``
registers it. Jobs are registered here; training runs and evaluations in ``training.liveness`` (imported by
the training app on start). The error a failed row gets says what happened and what to do next; a failed
export job fails its DatasetExport too.

A message the broker delivers again later (``acks_late``: the dead worker never acknowledged it) finds the
row failed, or still running if nobody noticed yet, and does nothing: only a queued row is ever claimed
(``annotation.jobs.lifecycle.run_job``, ``training.runs.claim``), so a task never runs twice at once and a failed row is
never flipped back. The admin starts the work again, which fills in only what is missing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from ..models import DatasetExport, Job, JobKind, JobStatus
from .models import stale_after_s

logger = logging.getLogger(__name__)

WORKER_DIED = "the worker died"  # the message of a failed row; the error says more


def heartbeat_s() -> float:
    return float(getattr(settings, "WORKER_HEARTBEAT_S", 5))


def watchdog_s() -> float:
    return float(getattr(settings, "WORKER_WATCHDOG_S", 15))


# --- which models are watched ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    model: type
    where: Callable  # row -> " at step 4 of 10", or ""
    hint: Callable  # row -> what to do now, one sentence
    after_fail: Callable | None = None  # (row, error) -> None: rows that depend on this one


_WATCHED: dict[type, Watched] = {}


def watch(model, *, hint: Callable, where: Callable = lambda row: "", after_fail: Callable | None = None) -> None:
    _WATCHED[model] = Watched(model, where, hint, after_fail)


def watched_models() -> list[type]:
    return list(_WATCHED)


# --- the heartbeat -------------------------------------------------------------------------------------


class Heartbeat:
    """``with Heartbeat(Job, pk):`` — a daemon thread keeps ``heartbeat_at`` fresh while the work runs."""

    def __init__(self, model, pk: int, every_s: float | None = None):
        self.model, self.pk = model, pk
        self.every_s = heartbeat_s() if every_s is None else every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{model.__name__}-{pk}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        # Not long: a beat waiting on a lock (SQLite, behind a transaction the work holds open) must not hold up
        # the end of the work; a late beat only touches a row that is still running.
        self._thread.join(timeout=2)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.every_s):
                try:
                    self.model.objects.filter(pk=self.pk, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
                except Exception:  # a database hiccup must not kill the thread; the next beat may work
                    if not self._stop.is_set():
                        logger.exception("heartbeat for %s %s failed", self.model.__name__, self.pk)
                    close_old_connections()
        finally:
            connection.close()  # this thread's own connection


# --- noticing a dead worker ----------------------------------------------------------------------------


def _when(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "never"


def _fail(queryset, reason: str) -> int:
    """Fail each row of ``queryset`` that is still running with the same heartbeat; the update re-checks both,
    so a race with the worker (a late beat, its own finish) or another watchdog is harmless."""
    watched = _WATCHED[queryset.model]
    failed = 0
    for row in queryset:
        what = reason.format(worker=row.worker or "its worker", heartbeat=_when(row.heartbeat_at))
        error = f"{what}{watched.where(row)}. {watched.hint(row)}"
        updated = queryset.model.objects.filter(pk=row.pk, status=JobStatus.RUNNING).filter(
            heartbeat_at=row.heartbeat_at).update(status=JobStatus.FAILED, error=error, finished_at=timezone.now(),
                                                  message=WORKER_DIED)
        if updated:
            logger.warning("%s %s marked failed: %s", queryset.model.__name__, row.pk, error)
            if watched.after_fail:
                watched.after_fail(row, error)
        failed += updated
    return failed


def mark_stale(now=None, models=None) -> int:
    """Fail running rows whose worker stopped sending heartbeats; returns how many."""
    reason = ("No heartbeat from {worker} since {heartbeat} (more than " f"{stale_after_s():g} s): the worker died "
              "(killed, out of memory, or its machine stopped)")
    return sum(_fail(model.objects.stale(now), reason) for model in (models or watched_models()))


def mark_worker_restarted(worker: str) -> int:
    """Fail the rows a worker of this name was running: it has just started, so they have no one left."""
    if not worker:
        return 0
    reason = ("The worker {worker} restarted while this was running (last heartbeat {heartbeat}): "
              "the worker died (killed or crashed)")
    return sum(_fail(model.objects.filter(status=JobStatus.RUNNING, worker=worker), reason)
               for model in watched_models())


_watchdog: threading.Thread | None = None
_watchdog_lock = threading.Lock()


def start_watchdog(every_s: float | None = None) -> threading.Thread:
    """Start this process's watchdog thread (once: later calls return the running one)."""
    global _watchdog
    every = watchdog_s() if every_s is None else every_s

    def watch_loop() -> None:
        while True:
            try:
                close_old_connections()
                mark_stale()
            except Exception:  # keep watching through database restarts
                logger.exception("liveness watchdog pass failed")
            threading.Event().wait(every)

    with _watchdog_lock:
        if _watchdog is None or not _watchdog.is_alive():
            _watchdog = threading.Thread(target=watch_loop, name="liveness-watchdog", daemon=True)
            _watchdog.start()
        return _watchdog


def on_worker_ready(hostname: str) -> None:
    """What a Celery worker does once it is up (``annotation.tasks``): fail what its previous life left
    running, then keep watching everyone's heartbeats."""
    try:
        mark_worker_restarted(hostname)
    except Exception:  # a worker that cannot reach the database now still starts; the watchdog retries
        logger.exception("could not fail the jobs %s left behind", hostname)
    start_watchdog()


# --- jobs ----------------------------------------------------------------------------------------------


def _job_where(job: Job) -> str:
    return f" with {job.done} of {job.total} done" if job.total else ""


def job_hint(job: Job) -> str:
    evaluation = job.params.get("evaluation_id")
    if evaluation:
        return (f"It ran inside evaluation #{evaluation}, which failed with it: start that evaluation again "
                "(generation and judging fill in only what is missing).")
    return {
        JobKind.GENERATE: "Start it again: generation fills in only what is missing.",
        JobKind.JUDGE: "Start it again: judging fills in only what is missing (stored verdicts are reused).",
        JobKind.EXPORT: "No snapshot was recorded: export again (“Export again as a new snapshot” in the export list).",
    }.get(job.kind, "Start it again.")


def _job_failed(job: Job, error: str) -> None:
    """An export's own row says "running" too: it fails with its job."""
    if job.kind == JobKind.EXPORT and job.params.get("export_id"):
        DatasetExport.objects.filter(pk=job.params["export_id"], status=JobStatus.RUNNING).update(
            status=JobStatus.FAILED, error=error, finished_at=timezone.now())


watch(Job, where=_job_where, hint=job_hint, after_fail=_job_failed)
