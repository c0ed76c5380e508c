"""Knowing when a worker died: a heartbeat while the work runs, and the watchdog that fails what it left.

``Heartbeat`` touches the row every ``WORKER_HEARTBEAT_S``; ``mark_stale`` fails running rows whose heartbeat
is older than ``WORKER_STALE_AFTER_S`` (a watchdog thread in every worker, the staff pages, ``manage.py
check_training_runs``), and ``mark_worker_restarted`` what a restarted worker left behind. Every ``Work``
model is watched; the error says what happened, where, and what to do next.
"""

from __future__ import annotations

import logging
import threading

from django.apps import apps
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from .models import JobStatus, Work, stale_after_s, work_failed

logger = logging.getLogger(__name__)

WORKER_DIED = "the worker died"  # the message of a failed row; the error says more


def heartbeat_s() -> float:
    return float(getattr(settings, "WORKER_HEARTBEAT_S", 5))


def watchdog_s() -> float:
    return float(getattr(settings, "WORKER_WATCHDOG_S", 15))


def watched_models() -> list[type[Work]]:
    """Every concrete ``Work`` model of the installed apps."""
    return [model for model in apps.get_models() if issubclass(model, Work)]


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
    failed = 0
    for row in queryset:
        what = reason.format(worker=row.worker or "its worker", heartbeat=_when(row.heartbeat_at))
        error = f"{what}{row.where()}. {row.retry_hint()}"
        updated = queryset.model.objects.filter(pk=row.pk, status=JobStatus.RUNNING).filter(
            heartbeat_at=row.heartbeat_at).update(status=JobStatus.FAILED, error=error, finished_at=timezone.now(),
                                                  message=WORKER_DIED)
        if updated:
            logger.warning("%s %s marked failed: %s", queryset.model.__name__, row.pk, error)
            work_failed.send(sender=queryset.model, row=row, error=error)
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
