"""``manage.py check_training_runs``: fail runs and jobs whose worker died (for cron, where no worker is left
to notice)."""

from django.core.management.base import BaseCommand

from annotation.jobs.liveness import mark_stale


class Command(BaseCommand):
    help = "Mark training runs, evaluations and jobs with a stale heartbeat as failed, with the reason."

    def handle(self, *args, **options):
        self.stdout.write(f"{mark_stale()} run(s) marked failed.")
