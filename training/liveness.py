"""Knowing when a worker died: heartbeats while a run is alive, and three ways to notice it stopped.

A worker killed mid-run (SIGKILL, out of memory, machine gone) cannot record anything, so its run would
say "running" forever. Instead:

- ``Heartbeat`` touches the row every HEARTBEAT_S from a thread, so a slow step or a model load never
  looks like death;
- ``mark_stale`` fails running rows whose heartbeat is older than STALE_AFTER_S. It runs in a watchdog
  thread of every Celery worker (every WATCHDOG_S, so a dead training worker is noticed by any other worker
  within a minute) and whenever an admin opens a run page or the run list;
- ``mark_worker_restarted`` fails, at once, the rows a worker of the same name left behind when it starts
  again (the ``worker_ready`` signal), even when nothing else is running to notice.
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections, connection
from django.utils import timezone

from annotation.models import JobStatus

from .models import HEARTBEAT_S, STALE_AFTER_S, EvaluationRun, TrainingRun

logger = logging.getLogger(__name__)

WATCHDOG_S = 15
RESUME_HINT = {TrainingRun: " Resume the run to continue from its last checkpoint.",
               EvaluationRun: " Start it again: generation fills in only what is missing."}


class Heartbeat:
    """``with Heartbeat(TrainingRun, pk):`` — a daemon thread keeps ``heartbeat_at`` fresh while running."""

    def __init__(self, model, pk: int, every_s: float = HEARTBEAT_S):
        self.model, self.pk, self.every_s = model, pk, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{model.__name__}-{pk}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.every_s):
                try:
                    self.model.objects.filter(pk=self.pk, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
                except Exception:  # a database hiccup must not kill the thread; the next beat may work
                    logger.exception("heartbeat for %s %s failed", self.model.__name__, self.pk)
                    close_old_connections()
        finally:
            connection.close()  # this thread's own connection


def _fail(queryset, reason: str) -> int:
    """Fail each row of ``queryset`` that is still running; the update re-checks, so a race is harmless."""
    failed = 0
    for row in queryset:
        hint = RESUME_HINT[type(row)]
        where = f" at step {row.step} of {row.total_steps}" if isinstance(row, TrainingRun) else ""
        error = f"{reason.format(worker=row.worker or 'its worker', heartbeat=_when(row.heartbeat_at))}{where}.{hint}"
        failed += queryset.model.objects.filter(pk=row.pk, status=JobStatus.RUNNING).filter(
            heartbeat_at=row.heartbeat_at).update(status=JobStatus.FAILED, error=error, finished_at=timezone.now(),
                                                  message="the worker died")
        logger.warning("%s %s marked failed: %s", queryset.model.__name__, row.pk, error)
    return failed


def _when(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "never"


def mark_stale(now=None) -> int:
    """Fail running rows whose worker stopped sending heartbeats; returns how many."""
    reason = ("No heartbeat from {worker} since {heartbeat} (more than " f"{STALE_AFTER_S} s): the worker died "
              "(killed, out of memory, or its machine stopped)")
    return sum(_fail(model.objects.stale(now), reason) for model in (TrainingRun, EvaluationRun))


def mark_worker_restarted(worker: str) -> int:
    """Fail the rows a worker of this name was running: it has just started, so they have no one left."""
    if not worker:
        return 0
    reason = "The worker {worker} restarted while this was running (last heartbeat {heartbeat}): it was killed or crashed"
    return sum(_fail(model.objects.filter(status=JobStatus.RUNNING, worker=worker), reason)
               for model in (TrainingRun, EvaluationRun))


def start_watchdog(every_s: float = WATCHDOG_S) -> threading.Thread:
    def watch() -> None:
        while True:
            try:
                close_old_connections()
                mark_stale()
            except Exception:  # keep watching through database restarts
                logger.exception("training watchdog pass failed")
            threading.Event().wait(every_s)

    thread = threading.Thread(target=watch, name="training-watchdog", daemon=True)
    thread.start()
    return thread
