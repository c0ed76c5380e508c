from pathlib import Path

from django.core.management.base import BaseCommand

from annotation.documents.tournaments import export_study
from annotation.models import Campaign

from .judge_comparisons import _named


class Command(BaseCommand):
    help = ("Write a campaign's study in CompX's import formats: documents.jsonl, profiles.jsonl, tournaments.jsonl "
            "and votes.jsonl, to be imported elsewhere with import_documents --allow-title-only, import_profiles, "
            "import_tournaments --campaign and import_votes --campaign, in that order.")

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True)
        parser.add_argument("out", type=Path, help="Folder to write the four files into.")

    def handle(self, *args, **options):
        counts = export_study(_named(Campaign, options["campaign"], "campaign"), options["out"])
        self.stdout.write(self.style.SUCCESS(", ".join(f"{name}: {n} rows" for name, n in counts.items())))
