"""Celery tasks: each takes a primary key and runs the logic that does the work.

Generation, judging and export are imported when their task runs: web processes import this module to send
tasks and must not load the model and numeric libraries those need (tests/test_review_imports.py).
"""

import socket

from celery import shared_task
from celery.signals import worker_init, worker_ready

from .jobs.lifecycle import run_job
from .jobs.liveness import on_worker_ready
from .jobs.slots import remember_worker


@shared_task(bind=True)
def ping_task(self, job_id: int) -> None:
    """Proves a worker is alive and shares our database: it writes its node name into the job."""
    run_job(job_id, lambda job, progress: f"pong from {self.request.hostname or socket.gethostname()}")


@shared_task
def generate_profiles_task(job_id: int) -> None:
    from .profiles.generation import run_generation

    run_job(job_id, run_generation)


@shared_task
def export_dataset_task(export_id: int) -> None:
    """Write a DPO dataset snapshot; progress goes to the export's job, if it has one."""
    from .export.dataset import run_export_task

    run_export_task(export_id)


@shared_task
def judge_comparisons_task(job_id: int) -> None:
    from .judging.strategies import run_judging

    run_job(job_id, run_judging)


@worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    # Whatever this worker was running before it (re)started has died with it (jobs, training runs,
    # evaluations); then keep watching every worker's heartbeats.
    on_worker_ready(getattr(sender, "hostname", "") or "")


@worker_init.connect
def _on_worker_init(sender=None, **kwargs) -> None:
    # Its slots and queues, before the pool forks: a task asks them before it waits for another (jobs.slots).
    remember_worker(sender)
