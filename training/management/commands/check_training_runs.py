"""``manage.py check_training_runs``: fail runs whose worker died (for cron, where no worker is left to notice)."""

from django.core.management.base import BaseCommand

from training.liveness import mark_stale


class Command(BaseCommand):
    help = "Mark training runs and evaluations with a stale heartbeat as failed, with the reason."

    def handle(self, *args, **options):
        self.stdout.write(f"{mark_stale()} run(s) marked failed.")
