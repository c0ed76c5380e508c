"""Fine-tuning runs: the worker side of a run (``run_training``: train with progress, cancel and heartbeat bound to
the row), resuming one as a new run from its last checkpoint, and a finished run's artefacts. The training
itself is ``training.ml.dpo.train``, which knows no Django.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation.jobs.lifecycle import Cancelled, Lost, WorkRunner
from annotation.models import DatasetExport, Generator, JobStatus
from training.ml.dpo import CONFIG_FILE, METRICS_FILE, check, last_checkpoint, load_config, train

from .models import TrainingLogEntry, TrainingRun

logger = logging.getLogger(__name__)

# Progress rows and the run's figures are written at most this often: cheap on CPU (steps take seconds)
# and still cheap on a GPU doing ten steps a second.
PROGRESS_EVERY_S = 2.0
# The cancel flag is read from the database at most this often (it is polled after every step).
CANCEL_POLL_S = 1.0
LOG_FILE = "train.log"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
MERGED_DIR = "merged"

# What the admin form starts from (DPOConfig and ModelConfig fields): works on two CPU cores with the default
# 135M model and the demo's long prompts (README, step 5); a GPU box simply runs it faster. Precision is left to
# the worker's machine (training.ml.dpo.machine_defaults: fp32 on CPU, bf16 on a bf16-capable GPU).
CPU_DEFAULTS: dict[str, Any] = {
    "model_name_or_path": "default",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "beta": 0.1,
    "loss_type": "sigmoid",
    "label_smoothing": 0.0,
    "learning_rate": 5e-5,  # DPOConfig's 1e-6 barely moves a LoRA adapter
    "num_train_epochs": 1.0,
    "max_steps": -1,
    "per_device_train_batch_size": 1,  # long prompts: batch 1 keeps memory low on CPU
    "gradient_accumulation_steps": 2,
    "max_length": 2048,  # longer than the demo's prompts; pairs whose prompt fills max_length are dropped
    "activation_checkpointing": True,  # trades some speed for much less activation memory at this length
    "seed": 42,
    "logging_steps": 1,
    "save_steps": 10,
    "save_total_limit": 2,
}


class TrainingError(Exception):
    """A run that cannot be started or resumed as asked (the message says why)."""


# ---------------------------------------------------------------------------------------------------------
# Starting, cancelling, resuming


def export_files(export: DatasetExport) -> tuple[Path, Path | None]:
    """The export's train JSONL and, when it has pairs, its test JSONL."""
    if export.status != JobStatus.SUCCEEDED or not export.path:
        raise TrainingError(f"export {export.name!r} is {export.get_status_display().lower()}, not a finished snapshot")
    if export.ties_as_kto:
        raise TrainingError(f"export {export.name!r} is in unpaired (KTO) format; DPO needs chosen/rejected pairs")
    folder = Path(export.path)
    if not folder.is_absolute():
        folder = Path(settings.MEDIA_ROOT) / folder
    train_file = folder / "train.jsonl" if folder.is_dir() else folder
    if train_file.suffix != ".jsonl" or not train_file.is_file():
        raise TrainingError(f"export {export.name!r} has no train.jsonl in {folder} (format {export.format}); "
                            "training reads the JSONL snapshot")
    if train_file.stat().st_size == 0:
        counts = f"{export.counts.get('train', 0)} train · {export.counts.get('test', 0)} test"
        raise TrainingError(f"export {export.name!r} has no train pairs ({counts}): export again once more pairs "
                            "are decided, or with test fraction 0 so that every pair is for training")
    test_file = train_file.with_name("test.jsonl")
    has_test = test_file.is_file() and test_file.stat().st_size > 0
    return train_file, test_file if has_test else None


def build_config(export: DatasetExport, values: dict[str, Any], use_test_split: bool = False) -> dict[str, Any]:
    """The run's config as ``python -m training.ml.dpo --config`` reads it: CPU defaults, overridden by ``values``,
    pointed at the export; raises ValueError naming a bad field."""
    train_file, test_file = export_files(export)
    config = {**CPU_DEFAULTS, **values, "dataset_path": str(train_file), "cache_root": str(settings.MODEL_CACHE_DIR)}
    if use_test_split and test_file:
        # Evaluated at every checkpoint, in batches the size of training's.
        config.update(eval_dataset_path=str(test_file), eval_strategy="steps", eval_steps=config["save_steps"],
                      per_device_eval_batch_size=config["per_device_train_batch_size"])
    check(config)
    return config


def runs_root() -> Path:
    return Path(settings.MEDIA_ROOT) / "training"


def unique_name(base: str, model=TrainingRun) -> str:
    """``base``, or ``base (2)``, ``base (3)`` … whichever ``model`` (a model with a unique name) has not got."""
    base = base[:90]
    name, n = base, 2
    while model.objects.filter(name=name).exists():
        name, n = f"{base} ({n})", n + 1
    return name


@transaction.atomic
def create_run(export: DatasetExport, config: dict[str, Any], name: str = "", user=None,
               resumed_from: TrainingRun | None = None) -> TrainingRun:
    base_model = config.get("model_name_or_path") or "default"
    run = TrainingRun.objects.create(
        name=unique_name(name or f"{export.name} · {Path(base_model).name} · {timezone.now():%Y-%m-%d %H:%M}"),
        export=export, base_model=base_model, config={}, created_by=user, resumed_from=resumed_from,
        total=max(config.get("max_steps", -1), 0), message="waiting for a training worker",
    )
    run.output_dir = str(runs_root() / f"run-{run.pk}")
    run.config = {**config, "output_dir": run.output_dir}
    run.save(update_fields=["output_dir", "config"])
    return run


def last_complete_checkpoint(run: TrainingRun) -> Path | None:
    """The newest checkpoint that was written to the end (trainer_state.json is written last).

    A worker killed while saving leaves a partial folder; resuming from it would fail.
    """
    return last_checkpoint(run.output_dir) if run.output_dir else None


def resumption(run: TrainingRun, user=None) -> TrainingRun:
    """A new queued run with the same config that starts from ``run``'s last complete checkpoint."""
    run.refresh_from_db()
    if not run.is_resumable:
        raise TrainingError(f"run {run.name!r} is {run.get_status_display().lower()}; only failed or cancelled "
                            "runs can be resumed")
    checkpoint = last_complete_checkpoint(run)
    inherited = run.config.get("resume_from_checkpoint")
    if checkpoint is None and isinstance(inherited, str) and (Path(inherited) / "trainer_state.json").is_file():
        checkpoint = Path(inherited)  # a resumption that died before its first save: go back to where it began
    config = {**run.config, "resume_from_checkpoint": str(checkpoint) if checkpoint else None}
    step = int(checkpoint.name.removeprefix("checkpoint-")) if checkpoint else 0
    root = run.name.split(" · resumed")[0]
    with transaction.atomic():
        new = create_run(run.export, config, f"{root} · resumed", user, resumed_from=run)
        # The curve up to the checkpoint belongs to the new run too; later steps are trained again.
        entries = run.log_entries.filter(step__lte=step)
        TrainingLogEntry.objects.bulk_create([
            TrainingLogEntry(run=new, step=e.step, epoch=e.epoch, loss=e.loss, reward_accuracy=e.reward_accuracy,
                             reward_margin=e.reward_margin, learning_rate=e.learning_rate, elapsed_s=e.elapsed_s)
            for e in entries
        ])
        new.done = step
        new.total = max(new.total, step)
        new.message = (f"waiting for a training worker; resumes from step {step}" if checkpoint
                       else "waiting for a training worker; no checkpoint was saved, so it starts from step 0")
        new.save(update_fields=["done", "total", "message"])
        return new


# ---------------------------------------------------------------------------------------------------------
# The worker side


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _metrics_from(entry: dict[str, Any]) -> dict[str, Any]:
    keep = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "learning_rate",
            "epoch", "eta_s", "elapsed_s")
    return {key: entry.get(key) for key in keep if entry.get(key) is not None}


class RunProgress:
    """``on_log`` / ``should_stop`` for ``dpo.train``, bound to one run's rows.

    Log entries are buffered and written together with the run's step and figures at most every
    PROGRESS_EVERY_S. Every write is conditional on the run still being "running": a run that was marked
    failed behind the worker's back (stale heartbeat) is never revived, and the worker stops.
    """

    def __init__(self, run: TrainingRun, log: logging.Logger | None = None):
        self.run = run
        self.log = log or logger
        self.pending: list[TrainingLogEntry] = []
        self.latest: dict[str, Any] = {}
        self.step = run.done
        self.total = run.total
        self.last_write = 0.0
        self.last_poll = 0.0
        self.stop = False
        self.lost = False  # the row is no longer ours to write

    def on_log(self, entry: dict[str, Any]) -> None:
        if entry.get("kind") == "status":  # the page's status follows the log at once
            self.log.info("%s", entry["message"])
            self.flush(message=entry["message"])
            return
        if entry.get("kind") == "eval":
            self.latest["eval"] = {k: v for k, v in entry.items() if k.startswith("eval_")}
            return
        self.step, self.total = entry["step"], entry["total_steps"]
        self.latest.update(_metrics_from(entry))
        self.pending.append(TrainingLogEntry(
            run_id=self.run.pk, step=entry["step"], epoch=entry.get("epoch"), loss=entry.get("loss"),
            reward_accuracy=entry.get("rewards/accuracies"), reward_margin=entry.get("rewards/margins"),
            learning_rate=entry.get("learning_rate"), elapsed_s=entry.get("elapsed_s"),
        ))
        self.log.info("step %s/%s loss %s acc %s margin %s lr %s eta %ss", entry["step"], entry["total_steps"],
                      _fmt(entry.get("loss")), _fmt(entry.get("rewards/accuracies"), ".2f"),
                      _fmt(entry.get("rewards/margins")), _fmt(entry.get("learning_rate"), ".2e"),
                      _fmt(entry.get("eta_s"), ".0f"))
        if time.monotonic() - self.last_write >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self, **fields: Any) -> bool:
        """Write buffered entries and the run's figures; False when the run is no longer running."""
        self.last_write = time.monotonic()
        fields.setdefault("message", f"step {self.step} of {self.total}")
        with transaction.atomic():
            updated = self.run.save_progress(
                done=min(self.step, self.total) if self.total else self.step, total=self.total,
                latest_metrics=self.latest, heartbeat_at=timezone.now(), **fields)
            if updated and self.pending:
                # update_conflicts: a step logged twice (a cancel forces a log at the stop step) keeps the last.
                TrainingLogEntry.objects.bulk_create(
                    self.pending, update_conflicts=True, unique_fields=["run", "step"],
                    update_fields=["epoch", "loss", "reward_accuracy", "reward_margin", "learning_rate", "elapsed_s"])
        self.pending = []
        self.lost = self.lost or not updated
        return bool(updated)

    def should_stop(self) -> bool:
        if self.stop or time.monotonic() - self.last_poll < CANCEL_POLL_S:
            return self.stop
        self.last_poll = time.monotonic()
        row = TrainingRun.objects.filter(pk=self.run.pk).values("status", "cancel_requested").first()
        self.lost = self.lost or row is None or row["status"] != JobStatus.RUNNING
        self.stop = self.lost or bool(row and row["cancel_requested"])
        return self.stop

    def finish(self, status: str, message: str, error: str = "") -> None:
        if not self.flush(status=status, finished_at=timezone.now(), error=error, message=message):
            self.log.warning("run %s was no longer running when it ended (%s); left as it is", self.run.pk, status)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


class _LogFormat(logging.Formatter):
    """What the worker's own code printed (Celery hands stdout and stderr on as "celery.redirected") is written as
    printed, after the time: it is output, not a warning."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "celery.redirected":
            return f"{self.formatTime(record)} {record.getMessage()}"
        return super().format(record)


@contextmanager
def run_log(run: TrainingRun):
    """Everything logged in this process while the run trains also goes to ``output_dir/train.log``."""
    Path(run.output_dir).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(run.output_dir) / LOG_FILE, encoding="utf-8")
    handler.setFormatter(_LogFormat("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level or logging.WARNING, logging.INFO))
    try:
        yield logging.getLogger(f"training.run.{run.pk}")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


class _Training(WorkRunner):
    """Trains one claimed run, its progress and log bound to the run's row (``RunProgress``, ``run_log``)."""

    model = TrainingRun
    starting = "loading the model"

    def __init__(self, run: TrainingRun):
        super().__init__(run)
        self.progress = RunProgress(run)
        self.training = False  # train() has been called

    @contextmanager
    def running(self):
        with run_log(self.row) as log:
            self.log = self.progress.log = log
            yield

    @property
    def failed_message(self) -> str:
        # Before train(): a stored config edited into nonsense, an unwritable folder.
        return f"failed at step {self.progress.step}" if self.training else "failed before training started"

    def stopped(self, exc: BaseException) -> tuple[str, str]:
        return (f"stopped at step {self.progress.step}",
                f"the worker stopped during the run ({type(exc).__name__}); resume it to go on")

    def finish(self, status: str, message: str = "", error: str = "") -> None:
        self.progress.finish(status, message, error)

    def run(self) -> str:
        run, progress = self.row, self.progress
        script_args, training_args, model_args = load_config(run.config)
        self.log.info("run %s (%s) started on %s: %s pairs file, base model %s", run.pk, run.name, run.worker,
                      script_args.dataset_path, model_args.model_name_or_path)
        self.training = True
        result = train(script_args, training_args, model_args, on_log=progress.on_log, should_stop=progress.should_stop)
        progress.step, progress.total = result.global_step, result.max_steps
        progress.latest.update(train_loss=result.train_loss, elapsed_s=round(result.elapsed_s, 1), eta_s=0)
        if progress.lost:
            raise Lost(run)
        if result.cancelled:
            self.log.info("cancelled after step %s", result.global_step)
            where = Path(result.last_checkpoint).name if result.last_checkpoint else "no checkpoint"
            raise Cancelled(f"cancelled by an admin after step {result.global_step} of {result.max_steps}; resume "
                            f"continues from {where}")
        self.log.info("adapter saved in %s", result.adapter_dir)
        loss = f"; training loss {result.train_loss:.4f}" if result.train_loss is not None else ""
        return f"finished {result.global_step} steps in {result.elapsed_s:.0f} s{loss}"


def run_training(run_id: int, worker: str = "") -> str:
    """Train one queued run to its end and record how it ended; returns the final status (the run's own when it
    was not queued)."""
    return _Training.start(run_id, worker or _worker_name())


# ---------------------------------------------------------------------------------------------------------
# Artefacts and the next round


def adapter_dir(run: TrainingRun) -> Path | None:
    """The saved LoRA adapter of a finished run, or None."""
    folder = Path(run.output_dir) if run.output_dir else None
    if folder and all((folder / name).is_file() for name in ADAPTER_FILES):
        return folder
    return None


def artefacts(run: TrainingRun) -> list[dict[str, Any]]:
    """Downloadable files: the adapter, config, metrics, log, and a merged model when one was made."""
    if not run.output_dir:
        return []
    folder = Path(run.output_dir)
    described = {
        "adapter_model.safetensors": "LoRA adapter weights", "adapter_config.json": "LoRA adapter config",
        CONFIG_FILE: "training config", METRICS_FILE: "metrics and log history", LOG_FILE: "training log",
    }
    files = [{"name": name, "what": what, "size": (folder / name).stat().st_size}
             for name, what in described.items() if (folder / name).is_file()]
    merged = folder / MERGED_DIR
    if merged.is_dir():
        files += [{"name": f"{MERGED_DIR}/{p.name}", "what": "merged model", "size": p.stat().st_size}
                  for p in sorted(merged.iterdir()) if p.is_file()]
    return files


def artefact_path(run: TrainingRun, name: str) -> Path | None:
    """The file behind a download link, only if it is one of ``artefacts(run)`` (no path tricks)."""
    if name not in {a["name"] for a in artefacts(run)}:
        return None
    return Path(run.output_dir) / name


def merge(run_id: int) -> str:
    """Write base + adapter as one standalone model into ``output_dir/merged`` (the merge task)."""
    from training.ml.dpo import merge_adapter

    run = TrainingRun.objects.get(pk=run_id)
    adapter = adapter_dir(run)
    if adapter is None:
        raise TrainingError(f"run {run.name!r} has no adapter to merge")
    merge_adapter(run.base_model, adapter, Path(run.output_dir) / MERGED_DIR, cache_root=settings.MODEL_CACHE_DIR)
    return str(Path(run.output_dir) / MERGED_DIR)


def tuned_generator(run: TrainingRun, like: Generator | None = None) -> Generator:
    """The local generator "base model + this run's adapter" with the decoding of ``like`` (the model's defaults
    without it); made once per decoding, so tuned profiles are reused only when written the same way."""
    adapter = adapter_dir(run)
    if run.status != JobStatus.SUCCEEDED or adapter is None:
        raise TrainingError(f"run {run.name!r} has no trained adapter (it is {run.get_status_display().lower()})")
    source = like or Generator(backend="local", model=run.base_model)
    decoding = {k: v for k, v in source.decoding_settings().items() if k not in ("model", "adapter_path")}
    existing = Generator.objects.filter(source_run=run, adapter_path=str(adapter), **decoding).order_by("pk").first()
    if existing:
        return existing
    return Generator.objects.create(
        name=unique_name(f"{run.name} · tuned", Generator), backend="local", model=run.base_model,
        adapter_path=str(adapter), source_run=run, **decoding,
    )


def base_generator(run: TrainingRun) -> Generator:
    """A local generator for the run's base model with no adapter and default decoding (reused if present)."""
    existing = Generator.objects.filter(backend="local", model=run.base_model, adapter_path="").order_by("pk").first()
    if existing:
        return existing
    return Generator.objects.create(name=unique_name(f"{Path(run.base_model).name} · base", Generator),
                                    backend="local", model=run.base_model)

