"""Training-queue tasks (settings route ``training.tasks.*`` to the ``training`` queue).

Start training workers with one slot, so one run at a time has the machine:
``celery -A compx_site worker -Q training -c 1``. Each task calls a plain function; evaluations are imported
when their task runs, so that web processes, which import this module to send tasks, never load the judging
and numeric libraries (tests/test_review_imports.py).
"""

from celery import shared_task

from .runs import merge, run_training


@shared_task(bind=True)
def run_training_task(self, run_id: int) -> str:
    return run_training(run_id, worker=self.request.hostname or "")


@shared_task
def merge_adapter_task(run_id: int) -> str:
    return merge(run_id)


@shared_task(bind=True)
def evaluate_task(self, evaluation_id: int) -> str:
    from .evaluation import run_evaluation

    return run_evaluation(evaluation_id, worker=self.request.hostname or "")


@shared_task(bind=True)
def run_round_task(self, round_id: int) -> str:
    from .round import run_round

    return run_round(round_id, worker=self.request.hostname or "")
