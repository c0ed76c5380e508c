"""Whether a task may wait for work it sent: not in the one worker slot that work would need.

A task that waits for another task holds its worker slot while it waits. When the awaited task goes to a queue
this same worker consumes and the worker has one slot (``-c 1``: ``make worker`` on a one-core machine, a
Procfile that merges roles), the awaited task can start only after the waiting one ends: it never does. Code
that would wait asks :func:`would_wait_on_itself` first and runs the awaited work in its own process instead.
"""

from __future__ import annotations

import fnmatch

from django.conf import settings

# The worker this process serves: its slots and the queues it consumes; empty outside a worker. Set in the
# worker's main process before its pool forks (annotation.tasks, at worker_init), so its pool inherits it.
_this_worker: dict = {}


def remember_worker(sender) -> None:
    """Note the starting worker's (a WorkController's) slots and queues."""
    consume_from = sender.app.amqp.queues.consume_from
    queues = set(consume_from) if consume_from else {settings.CELERY_TASK_DEFAULT_QUEUE}
    concurrency = sender.concurrency if isinstance(sender.concurrency, int) else None  # "auto" is never one
    _this_worker.update(concurrency=concurrency, queues=queues)


def queue_of(task_name: str) -> str:
    """The queue the settings route ``task_name`` to."""
    for pattern, route in settings.CELERY_TASK_ROUTES.items():
        if fnmatch.fnmatchcase(task_name, pattern):
            return route["queue"]
    return settings.CELERY_TASK_DEFAULT_QUEUE


def would_wait_on_itself(task_name: str) -> bool:
    """True in a one-slot worker that consumes ``task_name``'s queue: waiting here for that task never ends."""
    return _this_worker.get("concurrency") == 1 and queue_of(task_name) in _this_worker.get("queues", ())
