from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        # Registers training runs and evaluations with annotation.jobs.liveness: a watchdog or a job page in any
        # process then fails a dead worker's run too, not only its jobs.
        from . import liveness  # noqa: F401
