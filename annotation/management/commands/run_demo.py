"""`make demo`: seed the demo, start the site and real Celery workers, print the URL and logins; Ctrl-C stops all."""

import os
import signal
import subprocess
import sys
import time
from io import StringIO

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from annotation import demo

# Judging has its own worker so it judges each sample while generation goes on with the next (the demo's judging
# job follows its generation job); training has its own so a run never blocks either.
WORKERS = {"main": "default,generation", "judging": "judging", "training": "training"}


class Command(BaseCommand):
    help = "Run the demo: seed data and users, start the web server and Celery workers, print the logins."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")

    def handle(self, *args, **options):
        logins = StringIO()
        call_command("seed_demo", stdout=logins)
        demo.ensure_demo_objects()
        jobs = demo.start_pipeline()
        processes = [self._worker(name, queues) for name, queues in WORKERS.items()]
        processes.append(self._web(options["addr"]))
        self._announce(options["addr"], logins.getvalue(), jobs)
        self._wait(processes)

    def _worker(self, name: str, queues: str) -> subprocess.Popen:
        log = settings.VAR_DIR / f"worker-{name}.log"
        command = [sys.executable, "-m", "celery", "-A", "compx_site", "worker", "-Q", queues, "-c", "1",
                   "-n", f"{name}@%h", "-l", "info", "--logfile", str(log)]
        return subprocess.Popen(command, env=os.environ.copy())

    def _web(self, addr: str) -> subprocess.Popen:
        command = [sys.executable, "manage.py", "runserver", "--noreload", addr]
        return subprocess.Popen(command, cwd=settings.BASE_DIR, env=os.environ.copy())

    def _announce(self, addr: str, seed_output: str, jobs) -> None:
        broker = settings.CELERY_BROKER_URL.split("://")[0]
        self.stdout.write(self.style.SUCCESS(f"\nCompX is running at http://{addr}/"))
        self.stdout.write(f"Admin: http://{addr}/admin/   Expert queue: http://{addr}/review/")
        self.stdout.write(seed_output.strip())
        self.stdout.write(f"Workers: {', '.join(WORKERS)} (broker: {broker}; logs in {settings.VAR_DIR}/worker-*.log)")
        if demo.pipeline_status(jobs) != "ready":
            self.stdout.write(f"Getting the demo ready (once): the workers generate candidate profiles with the "
                              f"offline model and judge each sample as soon as it is generated: the first pairs "
                              f"reach the experts' queues once the first sample is done, the rest follow sample by "
                              f"sample (README: First start, measured). "
                              f"Watch: http://{addr}/jobs/{jobs[0].pk}/ and http://{addr}/jobs/{jobs[1].pk}/")
        self.stdout.write("Press Ctrl-C to stop the site and the workers.\n")

    def _wait(self, processes: list[subprocess.Popen]) -> None:
        # A SIGTERM (from a process manager or `timeout`) stops the children too, like Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while all(p.poll() is None for p in processes):
                time.sleep(0.5)
            self.stderr.write("A demo process stopped on its own; stopping the others.")
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


def _interrupt(signum, frame):
    raise KeyboardInterrupt
