"""Training-queue tasks (settings route ``training.tasks.*`` to the ``training`` queue).

Start training workers with one slot, so one run at a time has the machine:
``celery -A compx_site worker -Q training -c 1``. The real work lives in plain functions. Dead-worker
detection (heartbeats, the watchdog every worker starts) is ``annotation.liveness``, started in
``annotation.tasks``.
"""

from celery import shared_task


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

