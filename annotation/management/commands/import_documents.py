from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.documents.importing import ImportFailed, ImportOptions, import_documents


class Command(BaseCommand):
    help = "Import abstracts from a JSONL or CSV file (all-or-nothing; re-importing changes nothing)."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", choices=["jsonl", "csv"], default="", help="Default: from the file name.")
        parser.add_argument("--group-by", choices=["author"], default="",
                            help="Build samples from each first author's documents (rows without 'sample').")
        parser.add_argument("--sample-size", type=int, default=5, help="Documents per sample with --group-by.")
        parser.add_argument("--heldout-fraction", type=float, default=0.0,
                            help="Share of new samples put in the held-out split (stable per sample name).")
        parser.add_argument("--allow-title-only", action="store_true",
                            help="Rows may lack an abstract (a study that kept only titles): stored as title-only "
                                 "documents, which carry imported profiles and labels but are never used as prompts.")

    def handle(self, *args, **options):
        if not options["path"].exists():
            raise CommandError(f"{options['path']}: no such file")
        import_options = ImportOptions(
            format=options["format"], group_by=options["group_by"], sample_size=options["sample_size"],
            heldout_fraction=options["heldout_fraction"], allow_title_only=options["allow_title_only"],
        )
        try:
            result = import_documents(options["path"], import_options)
        except ImportFailed as exc:
            raise CommandError(exc.report()) from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{options['path'].name}: {result.summary()}"))
