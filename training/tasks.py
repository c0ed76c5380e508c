"""Training-queue tasks (settings route ``training.tasks.*`` to the ``training`` queue).

Start training workers with one slot, so one run at a time has the machine:
``celery -A compx_site worker -Q training -c 1``. The real work lives in plain functions.
"""

from celery import shared_task
from celery.signals import worker_ready

from .liveness import mark_worker_restarted, start_watchdog


@shared_task(bind=True)
def run_training_task(self, run_id: int) -> str:
    from .runs import run_training

    return run_training(run_id, worker=self.request.hostname or "")


@shared_task
def merge_adapter_task(run_id: int) -> str:
    from .runs import merge

    return merge(run_id)


@shared_task(bind=True)
def evaluate_task(self, evaluation_id: int) -> str:
    from .evaluation import run_evaluation

    return run_evaluation(evaluation_id, worker=self.request.hostname or "")


@worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    # Whatever this worker was running before it (re)started has died with it; then keep watching others.
    mark_worker_restarted(getattr(sender, "hostname", "") or "")
    start_watchdog()
