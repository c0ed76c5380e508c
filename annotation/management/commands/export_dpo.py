"""`manage.py export_dpo`: the same export as the admin's, run in this process with a progress bar."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from annotation.export.dataset import ExportError, export_dataset
from annotation.models import Campaign, DatasetExport, ExportFormat, ExportPolicy, JudgePanel


class BarProgress:
    """annotation.export.Progress drawn as a tqdm bar."""

    def __init__(self, stream):
        self.stream, self.bar = stream, None

    def start(self, total: int | None = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="comparison", desc="Exporting", file=self.stream)

    def advance(self, done: int, message: str = "") -> None:
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Command(BaseCommand):
    help = "Export a frozen DPO dataset snapshot (TRL format) chosen by policy."

    def add_arguments(self, parser):
        parser.add_argument("--policy", required=True, choices=ExportPolicy.values)
        parser.add_argument("--format", default=ExportFormat.JSONL, choices=ExportFormat.values)
        parser.add_argument("--out", required=True, type=Path, help="Snapshot folder (must not exist or be empty).")
        parser.add_argument("--campaign", help="Only this campaign's comparisons and votes (by name).")
        parser.add_argument("--panel", help="Judge policies: only this panel's judges, at its threshold (by name).")
        parser.add_argument("--test-fraction", type=float, default=0.1)
        parser.add_argument("--ties", choices=["drop", "kto"], default="drop",
                            help="Ties and 'both bad': dropped, or unpaired negatives (the whole export in KTO format).")
        parser.add_argument("--kappa-threshold", type=float, default=0.6, help="judge_calibrated: minimum judge–expert κ.")
        parser.add_argument("--name", help="Name of the export record (default: policy and time).")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **options):
        export = DatasetExport.objects.create(
            name=options["name"] or f"{options['policy']}-{timezone.now():%Y%m%d-%H%M%S}",
            policy=options["policy"], format=options["format"], test_fraction=options["test_fraction"],
            ties_as_kto=options["ties"] == "kto", kappa_threshold=options["kappa_threshold"],
            campaign=self._named(Campaign, options["campaign"]), panel=self._named(JudgePanel, options["panel"]),
        )
        progress = None if options["no_progress"] else BarProgress(self.stderr._out)
        try:
            result = export_dataset(export, progress, out_dir=options["out"])
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if progress:
                progress.close()
        rate = (result.counts["train"] + result.counts["test"]) / max(result.seconds, 1e-9)
        self.stdout.write(self.style.SUCCESS(f"{export.name}: {result.summary()} ({rate:,.0f} rows/s)"))
        self.stdout.write(f"Snapshot: {export.path}\nsha256 of SHA256SUMS: {export.sha256}")

    def _named(self, model, name: str | None):
        if not name:
            return None
        try:
            return model.objects.get(name=name)
        except model.DoesNotExist:
            raise CommandError(f"no {model._meta.verbose_name} named {name!r}") from None
