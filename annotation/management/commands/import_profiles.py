from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.documents.importing import ImportFailed
from annotation.documents.labels import import_profiles


class Command(BaseCommand):
    help = ("Import candidate profiles made elsewhere (JSONL: sample, generator, candidate, text, optional "
            "attributes); all-or-nothing. Says how many are invalid and why.")

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)

    def handle(self, *args, **options):
        try:
            result = import_profiles(options["path"])
        except (ImportFailed, OSError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{options['path'].name}: {result.summary()}"))
