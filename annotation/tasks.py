import socket

from celery import shared_task

from .jobs import run_job


@shared_task
def ping_task(job_id: int) -> None:
    """Proves a worker is alive and shares our database: it writes its hostname into the job."""
    run_job(job_id, lambda job, progress: f"pong from {socket.gethostname()}")


@shared_task
def generate_profiles_task(job_id: int) -> None:
    from .generation import run_generation

    run_job(job_id, run_generation)
