import time

from django.core.management.base import BaseCommand, CommandError

from annotation.models import JobStatus
from annotation.start import start_ping


class Command(BaseCommand):
    help = "Send a job through the broker and wait for a worker to finish it."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=30)

    def handle(self, *args, **options):
        job = start_ping()
        deadline = time.monotonic() + options["timeout"]
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.status == JobStatus.SUCCEEDED:
                self.stdout.write(self.style.SUCCESS(job.message))
                return
            if job.is_finished:
                raise CommandError(f"job ended {job.status}: {job.error}")
            time.sleep(0.3)
        raise CommandError(f"no worker finished job #{job.pk} within {options['timeout']} s")
