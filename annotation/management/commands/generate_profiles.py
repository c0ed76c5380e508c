from django.core.management.base import BaseCommand, CommandError

from annotation.documents.models import TitleOnly
from annotation.jobs.lifecycle import follow_in
from annotation.models import Generator, Sample, Split
from annotation.start import start_generation


class Command(BaseCommand):
    help = "Generate candidate profiles in a Celery worker (queue 'generation') and show its progress."

    def add_arguments(self, parser):
        parser.add_argument("--generator", required=True, help="Generator name (see the admin).")
        parser.add_argument("--candidates", type=int, help="Candidates per sample (default: the generator's).")
        parser.add_argument("--split", choices=Split.values, help="Only samples of this split.")
        parser.add_argument("--limit", type=int, help="At most this many samples.")
        parser.add_argument("--no-wait", action="store_true", help="Queue the job and return.")

    def handle(self, *args, **options):
        generator = Generator.objects.filter(name=options["generator"]).first()
        if generator is None:
            names = ", ".join(Generator.objects.values_list("name", flat=True)) or "none yet"
            raise CommandError(f"no generator named {options['generator']!r} (known: {names})")
        samples = Sample.objects.order_by("pk")
        if options["split"]:
            samples = samples.filter(split=options["split"])
        if options["limit"]:
            samples = samples.filter(pk__in=list(samples.values_list("pk", flat=True)[: options["limit"]]))
        try:
            job = start_generation(generator, samples, options["candidates"])
        except TitleOnly as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Queued job #{job.pk} for {job.total} sample(s) on the 'generation' queue.")
        follow_in(self, job, options["no_wait"])
