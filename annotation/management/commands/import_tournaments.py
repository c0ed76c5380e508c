from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.documents.importing import ImportFailed
from annotation.documents.tournaments import import_tournaments


class Command(BaseCommand):
    help = ("Import knockout tournaments played elsewhere (JSONL, one expert's or judge's tree over one sample per "
            "line, byes allowed; see the README): matches stored as votes or one-order verdicts, the preferences the "
            "tree implies marked implied. All-or-nothing.")

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--campaign", default="",
                            help="Campaign the matches go to (needed for experts' tournaments: their votes are in it).")

    def handle(self, *args, **options):
        try:
            result = import_tournaments(options["path"], options["campaign"])
        except (ImportFailed, OSError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{options['path'].name}: {result.summary()}"))
