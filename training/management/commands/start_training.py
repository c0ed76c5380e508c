"""``manage.py start_training --export ID``: the admin's "Start a training run" form, from a shell."""

import time

from django.core.management.base import BaseCommand, CommandError

from annotation.models import DatasetExport
from training.ml.dpo import PRECISIONS, parse_flags
from training.models import TrainingRun
from training.runs import TrainingError, run_training
from training.start import resume_training, start_training

# Command-line names for the config fields (DPOConfig, ModelConfig) people change most; anything else goes
# through --set.
SHORTCUTS = {
    "base_model": "model_name_or_path", "max_steps": "max_steps", "epochs": "num_train_epochs",
    "learning_rate": "learning_rate", "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps", "max_length": "max_length", "loss_type": "loss_type",
    "beta": "beta", "lora_r": "lora_r", "seed": "seed", "save_steps": "save_steps",
}


class Command(BaseCommand):
    help = "Start a DPO + LoRA run on an export snapshot in a training worker (or here) and follow it."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--export", help="Export id or name.")
        target.add_argument("--resume", type=int, metavar="RUN_ID", help="Resume a failed or cancelled run.")
        parser.add_argument("--name", default="")
        for option in SHORTCUTS:
            parser.add_argument(f"--{option.replace('_', '-')}", dest=option)
        parser.add_argument("--precision", choices=list(PRECISIONS),
                            help="auto (the default): bf16 on a GPU that supports it, fp32 elsewhere.")
        parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                            help="Any other field of DPOConfig or ModelConfig (repeatable), e.g. --set lora_alpha=64.")
        parser.add_argument("--use-test-split", action="store_true", help="Evaluate on the export's test pairs.")
        parser.add_argument("--here", action="store_true",
                            help="Train in this process instead of a worker (e.g. on a GPU box that reaches the database).")
        parser.add_argument("--no-wait", action="store_true", help="Queue the run and return.")

    def handle(self, *args, **options):
        try:
            run = self._resume(options) if options["resume"] else self._start(options)
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Run #{run.pk} “{run.name}” → {run.output_dir}")
        if options["here"]:
            run_training(run.pk)
        elif options["no_wait"]:
            self.stdout.write("Queued on the 'training' queue.")
            return
        run = self._follow(run)
        if run.status != "succeeded":
            raise CommandError(f"run #{run.pk} {run.status}: {run.error or run.message}")
        self.stdout.write(self.style.SUCCESS(f"{run.message}; adapter in {run.output_dir}"))

    def _start(self, options) -> TrainingRun:
        key = options["export"]
        export = DatasetExport.objects.filter(pk=int(key)).first() if key.isdigit() else None
        export = export or DatasetExport.objects.filter(name=key).first()
        if export is None:
            raise CommandError(f"no export {key!r}")
        flags = {field: options[option] for option, field in SHORTCUTS.items() if options[option] is not None}
        for item in options["set"]:
            field, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--set {item!r}: expected FIELD=VALUE")
            flags[field.strip()] = value
        try:
            values = parse_flags(flags)  # typed as `python -m training.ml.dpo` types them
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        values.update(PRECISIONS[options["precision"] or "auto"])
        return start_training(export, values, name=options["name"], use_test_split=options["use_test_split"],
                              queue=not options["here"])

    def _resume(self, options) -> TrainingRun:
        if options["here"]:
            raise CommandError("--resume queues the resumed run for a worker; --here is not supported with it")
        run = TrainingRun.objects.filter(pk=options["resume"]).first()
        if run is None:
            raise CommandError(f"no training run #{options['resume']}")
        return resume_training(run)

    def _follow(self, run: TrainingRun, poll_s: float = 2.0) -> TrainingRun:
        last = None
        while True:
            run.refresh_from_db()
            line = f"{run.status}: {run.message}"
            if line != last:
                self.stderr.write(line)
                last = line
            if run.is_finished:
                return run
            time.sleep(poll_s)
