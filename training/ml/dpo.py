"""DPO + LoRA fine-tuning of a causal LM on a CompX preference export.

Run it from the repository root, on a laptop or on a GPU box (no Django needed):

    python -m training.ml.dpo --config run.json

where ``run.json`` holds a :class:`TrainConfig`, e.g.::

    {"model_name_or_path": "default", "cache_root": "var/models",
     "dataset_path": "exports/v3/train.jsonl", "output_dir": "runs/dpo-v3",
     "max_steps": 200, "per_device_train_batch_size": 2, "learning_rate": 5e-5}

Any field can be overridden on the command line (``--set max_steps=10 --set precision=fp32``).
A failed or cancelled run resumes from its last checkpoint with ``--set resume_from_checkpoint=true``.

The dataset is JSONL in TRL's conversational preference format, one pair per line::

    {"prompt": [{"role": "system", ...}, {"role": "user", ...}],
     "chosen": [{"role": "assistant", "content": "Domain: ..."}],
     "rejected": [{"role": "assistant", "content": "Domain: ..."}], ...provenance columns...}

Provenance columns are dropped before training. With ``peft_config`` and no ``ref_model`` TRL uses the base
model with the adapter disabled as the DPO reference, so only one copy of the weights is in memory.

Output layout (``output_dir``)::

    adapter_model.safetensors, adapter_config.json, tokenizer files   the LoRA adapter (completed runs)
    train_config.json                                                  this config, written at the start
    metrics.json                                                       status + trainer log history
    checkpoints/checkpoint-<step>/                                     resumable Trainer checkpoints
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

# DPOConfig.loss_type values accepted by TRL 1.16 (trl/trainer/dpo_config.py).
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
PRECISIONS = ("auto", "fp32", "bf16")
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
# Keys of a training log entry passed to on_log (besides step bookkeeping).
TRAIN_LOG_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "learning_rate")

LogCallback = Callable[[dict[str, Any]], None]
StopCallback = Callable[[], bool]


def _default_cache_root() -> str:
    return os.environ.get("COMPX_MODEL_CACHE", str(Path(__file__).resolve().parents[2] / "var" / "models"))


@dataclass
class TrainConfig:
    """Everything a DPO run needs; JSON-serialisable (see :meth:`to_dict`)."""

    dataset_path: str = ""
    output_dir: str = ""
    model_name_or_path: str = "default"
    cache_root: str = field(default_factory=_default_cache_root)
    eval_dataset_path: str | None = None
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05  # note: TRL's disable_dropout (on by default) zeroes this during training
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # DPO
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0  # robust: flip probability in [0, 0.5); exo_pair: epsilon > 0
    # Optimisation
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    num_train_epochs: float = 1.0
    max_steps: int = -1  # -1: run num_train_epochs
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    precision: str = "auto"  # auto: bf16 on a bf16-capable GPU, fp32 elsewhere (CPU included)
    gradient_checkpointing: bool = False
    seed: int = 42
    # Bookkeeping
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int | None = 2
    eval_steps: int | None = None  # default: save_steps
    resume_from_checkpoint: str | bool | None = None  # True: latest checkpoint in output_dir/checkpoints, if any

    # --- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return config_from_dict(data)

    # --- validation --------------------------------------------------------------------------------------
    def validate(self, check_files: bool = True) -> "TrainConfig":
        """Raise ValueError naming the first bad field; return self."""

        def fail(name: str, why: str) -> None:
            raise ValueError(f"TrainConfig.{name}: {why} (got {getattr(self, name)!r})")

        if not self.dataset_path:
            fail("dataset_path", "is required")
        if check_files and not Path(self.dataset_path).is_file():
            fail("dataset_path", "file not found")
        if self.eval_dataset_path and check_files and not Path(self.eval_dataset_path).is_file():
            fail("eval_dataset_path", "file not found")
        if not self.output_dir:
            fail("output_dir", "is required")
        if self.lora_r < 1:
            fail("lora_r", "must be >= 1")
        if self.lora_alpha <= 0:
            fail("lora_alpha", "must be > 0")
        if not 0 <= self.lora_dropout < 1:
            fail("lora_dropout", "must be in [0, 1)")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            fail("target_modules", "must be a non-empty list of module names")
        if "lm_head" in self.target_modules:
            fail("target_modules", "TRL computes log-probs from lm_head.weight directly; an adapter there is never trained")
        if self.beta <= 0:
            fail("beta", "must be > 0")
        if self.loss_type not in LOSS_TYPES:
            fail("loss_type", f"must be one of {', '.join(LOSS_TYPES)}")
        if self.loss_type == "robust" and not 0 <= self.label_smoothing < 0.5:
            fail("label_smoothing", "must be in [0, 0.5) for the robust loss")
        if self.loss_type == "exo_pair" and self.label_smoothing <= 0:
            fail("label_smoothing", "must be > 0 for the exo_pair loss (the EXO paper uses 1e-3)")
        if not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "must be in [0, 1)")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)) \
                or self.learning_rate <= 0:
            fail("learning_rate", "must be > 0")
        if self.warmup_steps < 0:
            fail("warmup_steps", "must be >= 0")
        if self.max_steps == 0 or self.max_steps < -1:
            fail("max_steps", "must be -1 (use num_train_epochs) or >= 1")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            fail("num_train_epochs", "must be > 0 when max_steps is -1")
        if self.per_device_train_batch_size < 1:
            fail("per_device_train_batch_size", "must be >= 1")
        if self.gradient_accumulation_steps < 1:
            fail("gradient_accumulation_steps", "must be >= 1")
        if self.max_length < 16:
            fail("max_length", "must be >= 16 tokens")
        if self.precision not in PRECISIONS:
            fail("precision", f"must be one of {', '.join(PRECISIONS)}")
        if self.logging_steps < 1:
            fail("logging_steps", "must be >= 1")
        if self.save_steps < 1:
            fail("save_steps", "must be >= 1")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            fail("save_total_limit", "must be >= 1 or null")
        if self.eval_steps is not None and self.eval_steps < 1:
            fail("eval_steps", "must be >= 1 or null")
        resume = self.resume_from_checkpoint
        if isinstance(resume, str) and resume and check_files and not Path(resume).is_dir():
            fail("resume_from_checkpoint", "checkpoint folder not found")
        return self

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / CHECKPOINT_DIR


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from JSON data; unknown keys and wrong types raise ValueError naming the field."""
    if not isinstance(data, dict):
        raise ValueError("TrainConfig: expected a JSON object")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"TrainConfig: unknown field(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(name, value, TrainConfig.__dataclass_fields__[name].type)
    return TrainConfig(**kwargs)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return config.to_dict()


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Light type checking for JSON / command-line values (annotations are strings here)."""
    ann = str(annotation)
    if value is None:
        if "None" in ann:
            return None
        raise ValueError(f"TrainConfig.{name}: must not be null")
    try:
        if name == "resume_from_checkpoint":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            return value if isinstance(value, (bool, str)) else str(value)
        if ann.startswith("list"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise TypeError
            return [str(v) for v in value]
        if ann.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise TypeError
                return value.lower() in ("true", "1")
            return bool(value)
        if ann.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if ann.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if ann.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"TrainConfig.{name}: expected {ann} (got {value!r})") from None
    return value


# ---------------------------------------------------------------------------------------------------------
# Data


def _clean_messages(value: Any, where: str, what: str, assistant_only: bool) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: {what!r} must be a non-empty list of messages")
    messages = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: {what!r} messages need string 'role' and 'content'")
        # Only role/content: extra keys would become dataset columns of nested structs.
        messages.append({"role": m["role"], "content": m["content"]})
    if assistant_only and (len(messages) != 1 or messages[0]["role"] != "assistant"):
        raise ValueError(f"{where}: {what!r} must hold exactly one assistant message")
    if not assistant_only and messages[-1]["role"] == "assistant":
        raise ValueError(f"{where}: {what!r} must end with a user message")
    return messages


def load_preference_jsonl(path: str | Path):
    """Read a conversational preference JSONL into a ``datasets.Dataset`` with only prompt/chosen/rejected."""
    from datasets import Dataset

    rows = []
    warned_system = False
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object")
            for key in ("prompt", "chosen", "rejected"):
                if key not in obj:
                    raise ValueError(f"{where}: missing {key!r}")
            prompt = _clean_messages(obj["prompt"], where, "prompt", assistant_only=False)
            if prompt[0]["role"] != "system" and not warned_system:
                logger.warning("%s: prompt has no system message; some chat templates then inject their own", where)
                warned_system = True
            rows.append({
                "prompt": prompt,
                "chosen": _clean_messages(obj["chosen"], where, "chosen", assistant_only=True),
                "rejected": _clean_messages(obj["rejected"], where, "rejected", assistant_only=True),
            })
    if not rows:
        raise ValueError(f"{path}: no preference pairs")
    return Dataset.from_list(rows)


# ---------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    output_dir: str
    adapter_dir: str | None  # None when cancelled: the adapter of an unfinished run lives in its checkpoint
    cancelled: bool
    global_step: int
    max_steps: int
    train_loss: float | None
    last_checkpoint: str | None
    elapsed_s: float
    log_history: list[dict[str, Any]]


class _ProgressCallback:
    """Bridges Trainer events to on_log / should_stop (wrapped in a TrainerCallback by _make_callback)."""

    def __init__(self, on_log: LogCallback | None, should_stop: StopCallback | None):
        self.on_log_fn = on_log
        self.should_stop_fn = should_stop
        self.cancelled = False
        self.started = time.monotonic()
        self.first_step = 0

    def train_begin(self, state) -> None:
        self.started = time.monotonic()
        self.first_step = state.global_step  # > 0 when resuming

    def step_end(self, state, control) -> None:
        if self.should_stop_fn is not None and self.should_stop_fn():
            self.cancelled = True
            # Stop after this step, but checkpoint and log it first so the run can resume from here.
            control.should_training_stop = True
            control.should_save = True
            control.should_log = True

    def log(self, state, logs: dict[str, Any]) -> None:
        if self.on_log_fn is None or not logs:
            return
        if "loss" in logs:
            kind = "train"
        elif any(k.startswith("eval_") for k in logs):
            kind = "eval"
        else:
            return  # the end-of-training summary (train_runtime, ...) goes into TrainResult instead
        elapsed = time.monotonic() - self.started
        done = state.global_step - self.first_step
        remaining = max(state.max_steps - state.global_step, 0)
        payload: dict[str, Any] = {
            "kind": kind,
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": logs.get("epoch", state.epoch),
            "elapsed_s": round(elapsed, 3),
            "eta_s": round(elapsed / done * remaining, 3) if done > 0 else None,
        }
        if kind == "train":
            payload.update({key: logs.get(key) for key in TRAIN_LOG_KEYS})
        payload.update({k: v for k, v in logs.items() if k not in payload})
        self.on_log_fn(payload)


def _make_callback(progress: _ProgressCallback):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            progress.train_begin(state)

        def on_step_end(self, args, state, control, **kwargs):
            progress.step_end(state, control)
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            progress.log(state, logs or {})

    return ProgressCallback()


def resolve_precision(precision: str, device: str) -> str:
    """"auto" -> bf16 on a bf16-capable GPU, fp32 otherwise (CPU bf16 is only ~20% faster per step)."""
    import torch

    if precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("TrainConfig.precision: this GPU does not support bf16; use fp32")
    return precision


def _last_checkpoint(checkpoint_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not checkpoint_dir.is_dir():
        return None
    return get_last_checkpoint(str(checkpoint_dir))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def train(
    config: TrainConfig,
    on_log: LogCallback | None = None,
    should_stop: StopCallback | None = None,
) -> TrainResult:
    """Run DPO + LoRA as configured; see the module docstring for what lands in ``output_dir``.

    ``on_log(dict)`` is called at every logging step with kind ("train"/"eval"), step, total_steps, epoch,
    elapsed_s, eta_s, loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
    learning_rate (plus whatever else TRL logged). ``should_stop()`` is polled after every optimiser step;
    when it returns True the run checkpoints that step and ends with ``TrainResult.cancelled``.
    Exceptions propagate, after ``metrics.json`` records the failure.
    """
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from .models import is_local, load_tokenizer, pick_device, resolve_model

    config.validate()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_FILE, config.to_dict())

    started = time.monotonic()
    metrics: dict[str, Any] = {"status": "running", "log_history": []}
    trainer = None
    try:
        device = pick_device()
        precision = resolve_precision(config.precision, device)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model_path = resolve_model(config.model_name_or_path, config.cache_root)
        tokenizer = load_tokenizer(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, local_files_only=is_local(model_path))

        train_dataset = load_preference_jsonl(config.dataset_path)
        eval_dataset = load_preference_jsonl(config.eval_dataset_path) if config.eval_dataset_path else None

        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        on_cpu = device == "cpu"
        args = DPOConfig(
            output_dir=str(config.checkpoint_dir),
            # DPOConfig defaults that do not suit LoRA on small machines are all set explicitly.
            learning_rate=config.learning_rate,
            bf16=precision == "bf16",
            fp16=False,
            # transformers 5 renamed it; set both so neither TRL's default (on) nor a deprecation warning wins.
            activation_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing=config.gradient_checkpointing,
            use_cpu=on_cpu,
            dataloader_pin_memory=not on_cpu,
            report_to="none",
            disable_tqdm=True,
            beta=config.beta,
            loss_type=[config.loss_type],
            label_smoothing=config.label_smoothing,
            max_length=config.max_length,
            num_train_epochs=config.num_train_epochs,
            max_steps=config.max_steps,
            per_device_train_batch_size=config.per_device_train_batch_size,
            per_device_eval_batch_size=config.per_device_train_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            lr_scheduler_type=config.lr_scheduler_type,
            warmup_steps=config.warmup_steps,
            seed=config.seed,
            logging_strategy="steps",
            logging_steps=config.logging_steps,
            save_strategy="steps",
            save_steps=config.save_steps,
            save_total_limit=config.save_total_limit,
            eval_strategy="steps" if eval_dataset is not None else "no",
            eval_steps=(config.eval_steps or config.save_steps) if eval_dataset is not None else None,
        )
        progress = _ProgressCallback(on_log, should_stop)
        trainer = DPOTrainer(
            model=model,
            ref_model=None,  # with peft_config: the adapter-disabled base is the reference
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[_make_callback(progress)],
        )
        # With tqdm off, transformers prints every raw log dict; on_log is our progress channel.
        trainer.remove_callback(PrinterCallback)
        if len(trainer.train_dataset) == 0:
            raise ValueError(
                f"TrainConfig.max_length: every prompt is at least {config.max_length} tokens long, so no pair is "
                "left to train on; raise max_length"
            )

        resume = config.resume_from_checkpoint
        if resume is True:
            resume = _last_checkpoint(config.checkpoint_dir)  # None: nothing to resume, start fresh
            if resume is None:
                logger.info("resume_from_checkpoint=True but %s holds no checkpoint; starting fresh",
                            config.checkpoint_dir)
        elif resume is False or resume == "":
            resume = None
        train_output = trainer.train(resume_from_checkpoint=resume)

        state = trainer.state
        cancelled = progress.cancelled and state.global_step < state.max_steps
        adapter_dir = None
        if not cancelled:
            trainer.save_model(str(out))
            adapter_dir = str(out)
        metrics.update(
            status="cancelled" if cancelled else "completed",
            global_step=state.global_step,
            max_steps=state.max_steps,
            train_loss=train_output.training_loss,
            train_metrics=train_output.metrics,
            precision=precision,
            device=device,
            model_path=model_path,
            train_pairs=len(trainer.train_dataset),
            log_history=state.log_history,
        )
        result = TrainResult(
            output_dir=str(out),
            adapter_dir=adapter_dir,
            cancelled=cancelled,
            global_step=state.global_step,
            max_steps=state.max_steps,
            train_loss=train_output.training_loss,
            last_checkpoint=_last_checkpoint(config.checkpoint_dir),
            elapsed_s=time.monotonic() - started,
            log_history=list(state.log_history),
        )
        return result
    except BaseException as exc:
        metrics.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        if trainer is not None:
            metrics["log_history"] = trainer.state.log_history
            metrics["global_step"] = trainer.state.global_step
        raise
    finally:
        metrics["elapsed_s"] = round(time.monotonic() - started, 3)
        _write_json(out / METRICS_FILE, metrics)
        if trainer is not None and hasattr(trainer, "end"):
            try:
                trainer.end()  # transformers >= 5.18: finish trackers / process group
            except Exception:  # noqa: BLE001 - cleanup must not mask the real outcome
                logger.exception("trainer.end() failed")
        del trainer
        gc.collect()


def merge_adapter(
    base: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    cache_root: str | Path | None = None,
    dtype: str = "bf16",
) -> Path:
    """Merge a LoRA adapter into its base model and save a standalone model (+ tokenizer) in ``out_dir``.

    ``base`` is a model name or path as in :func:`training.ml.models.resolve_model` ("default" works).
    Written to a temp folder and renamed, so ``out_dir`` is either complete or absent.
    """
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .models import is_local, load_tokenizer, resolve_model

    base_path = resolve_model(str(base), cache_root or _default_cache_root())
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype, local_files_only=is_local(base_path))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        load_tokenizer(base_path).save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------------------------------------------------
# Command line


def _print_log(entry: dict[str, Any]) -> None:
    def fmt(key: str, spec: str = ".4f") -> str:
        value = entry.get(key)
        return "-" if value is None else format(value, spec)

    if entry.get("kind") == "eval":
        print(f"eval  step {entry['step']}/{entry['total_steps']} loss {fmt('eval_loss')} "
              f"acc {fmt('eval_rewards/accuracies', '.2f')}", flush=True)
        return
    eta = entry.get("eta_s")
    print(
        f"step {entry['step']}/{entry['total_steps']} epoch {fmt('epoch', '.2f')} loss {fmt('loss')} "
        f"acc {fmt('rewards/accuracies', '.2f')} margin {fmt('rewards/margins')} lr {fmt('learning_rate', '.2e')} "
        f"elapsed {entry['elapsed_s']:.0f}s eta {'-' if eta is None else f'{eta:.0f}s'}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ml.dpo", description="DPO + LoRA on a CompX export")
    parser.add_argument("--config", required=True, help="JSON file with TrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--merge-to", help="after training, also write a merged model into this folder")
    args = parser.parse_args(argv)

    try:
        data = json.loads(Path(args.config).read_text())
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
            data[key.strip()] = value
        config = config_from_dict(data).validate()
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    model_path = str(config.model_name_or_path)
    if model_path in ("", "default") or Path(model_path).is_dir():
        # A local model must never reach for the Hub (set before transformers is imported).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    result = train(config, on_log=_print_log)
    print(f"{'cancelled' if result.cancelled else 'done'}: {result.global_step}/{result.max_steps} steps, "
          f"{result.elapsed_s:.0f}s, adapter {result.adapter_dir or '-'}", flush=True)
    if args.merge_to and result.adapter_dir:
        path = merge_adapter(config.model_name_or_path, result.adapter_dir, args.merge_to, config.cache_root)
        print(f"merged model: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
