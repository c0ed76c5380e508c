from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.documents.importing import ImportFailed
from annotation.documents.labels import import_votes


class Command(BaseCommand):
    help = "Import expert votes and judge verdicts made elsewhere (JSONL, see the README); all-or-nothing."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--campaign", default="", help="Campaign that receives the expert votes.")

    def handle(self, *args, **options):
        try:
            result = import_votes(options["path"], options["campaign"])
        except (ImportFailed, OSError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{options['path'].name}: {result.summary()}"))
