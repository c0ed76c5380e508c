"""DPO + LoRA on a CompX preference export, in the shape of TRL's own script (trl/scripts/dpo.py).

    python -m training.ml.dpo --config run.yaml
    python -m training.ml.dpo --dataset_path exports/v3/train.jsonl --output_dir runs/v3 --max_steps 200
    accelerate launch --multi_gpu --num_processes 8 -m training.ml.dpo --config run.yaml   # README: Training on a node with several GPUs

A config (YAML or JSON) or a flag sets any field of ScriptArguments below, trl.DPOConfig or trl.ModelConfig;
flags win. ``output_dir`` ends up holding train_config.yaml (the run's config: ``--config`` on it runs it
again), metrics.json (status and log history, failures included), checkpoint-<step>/ folders and, once
complete, the LoRA adapter. No Django here: a CompX worker and a bare GPU box run the same ``train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "metrics.json"
MERGED_DIR = "merged"
# Where CompX departs from TRL's defaults (PLATFORM.md); a config file overrides these and flags override both.
DEFAULTS: dict[str, Any] = {
    "model_name_or_path": "default",  # the offline SmolLM2-135M-Instruct, see training.ml.models
    "use_peft": True,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "learning_rate": 5e-5,  # DPOConfig's 1e-6 barely moves a LoRA adapter
    "activation_checkpointing": False,  # TRL turns it on; short pairs fit without paying its recomputation
    "per_device_train_batch_size": 2,
    "logging_steps": 1,  # every step is a point on the run's curves
    "save_steps": 50,
    "save_total_limit": 2,
    "ddp_find_unused_parameters": False,  # several processes: every LoRA weight is used at every step
    "report_to": "none",
    "disable_tqdm": True,  # on_log is the progress channel
}
# Keys whose default depends on the machine (machine_defaults): always written to train_config.yaml.
MACHINE_KEYS = ("use_cpu", "bf16", "dtype", "dataloader_pin_memory")
TRAIN_LOG_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "learning_rate")


def _default_cache_root() -> str:
    return os.environ.get("COMPX_MODEL_CACHE", str(Path(__file__).resolve().parents[2] / "var" / "models"))


@dataclass
class ScriptArguments:
    """What a CompX run needs besides DPOConfig and ModelConfig."""

    dataset_path: str | None = field(
        default=None, metadata={"help": "Train pairs: TRL conversational preference JSONL (a CompX export's train.jsonl)."})
    eval_dataset_path: str | None = field(
        default=None, metadata={"help": "Test pairs, evaluated every eval_steps when eval_strategy is not 'no'."})
    cache_root: str = field(
        default_factory=_default_cache_root, metadata={"help": "Where the converted offline model is kept."})
    resume: bool = field(
        default=False, metadata={"help": "Resume from the newest complete checkpoint in output_dir, if there is one."})
    merge: bool = field(
        default=False, metadata={"help": f"Also save base + adapter as one model in output_dir/{MERGED_DIR}."})


def machine_defaults() -> dict[str, Any]:
    """bf16 on a GPU that has it; fp32 elsewhere, CPU included, where bf16 gains little."""
    import torch

    if not torch.cuda.is_available():
        return {"use_cpu": True, "bf16": False, "dtype": "float32", "dataloader_pin_memory": False}
    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "dtype": "bfloat16" if bf16 else "float32"}


# The admin's precision choices as config values; "auto" leaves them to machine_defaults.
PRECISIONS: dict[str, dict[str, Any]] = {
    "auto": {}, "fp32": {"bf16": False, "dtype": "float32"}, "bf16": {"bf16": True, "dtype": "bfloat16"}}


def make_parser(**kwargs):
    from trl import DPOConfig, ModelConfig, TrlParser

    # No abbreviations: among some 200 options, a shortened or misspelt flag must fail, not set another one.
    parser = TrlParser((ScriptArguments, DPOConfig, ModelConfig), prog="python -m training.ml.dpo", allow_abbrev=False,
                       **kwargs)
    parser.set_defaults(**DEFAULTS, **machine_defaults())
    return parser


def load_config(values: Mapping[str, Any]):
    """(ScriptArguments, DPOConfig, ModelConfig) from a mapping such as train_config.yaml or a run's stored config."""
    return make_parser().parse_dict({**DEFAULTS, **machine_defaults(), **values})


def parse_flags(flags: Mapping[str, str]) -> dict[str, Any]:
    """Typed config values from command-line strings, read as ``python -m training.ml.dpo --FIELD VALUE`` reads them."""
    if not flags:
        return {}
    parser = make_parser(exit_on_error=False)
    try:
        namespace, unknown = parser.parse_known_args([part for item in flags.items() for part in ("--" + item[0], item[1])])
    except argparse.ArgumentError as exc:
        raise ValueError(str(exc)) from None
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(arg[2:] for arg in unknown if arg.startswith('--'))}")
    return {key: getattr(namespace, key) for key in flags}


def _fields(config) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)


def config_values(*configs) -> dict[str, Any]:
    """What train_config.yaml holds: each field that differs from its dataclass default, and every field CompX
    or the machine chooses, so the file reloads into equal configs even where CompX's defaults change."""
    values: dict[str, Any] = {}
    for config in configs:
        plain = _fields(config)
        for f in dataclasses.fields(config):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            chosen = f.name in DEFAULTS or f.name in MACHINE_KEYS or getattr(config, f.name) != default
            # Tokens are secrets, and to_dict() masks them anyway.
            if f.init and chosen and not f.name.endswith("_token"):
                values[f.name] = plain[f.name]
    return values


def check(values: Mapping[str, Any]) -> None:
    """Refuse, naming the field, what TRL would only find once the model is loaded, or never."""

    def fail(name: str, why: str) -> None:
        raise ValueError(f"{name}: {why} (got {values.get(name)!r})")

    for name in ("dataset_path", "eval_dataset_path"):
        path = values.get(name)
        if path and not Path(path).is_file():
            fail(name, "file not found")
    if not values.get("dataset_path"):
        fail("dataset_path", "is required")
    if values.get("learning_rate", 1) <= 0:
        fail("learning_rate", "must be > 0")
    losses = values.get("loss_type") or []
    if "exo_pair" in ([losses] if isinstance(losses, str) else losses) and not values.get("label_smoothing"):
        fail("label_smoothing", "must be > 0 for the exo_pair loss (the EXO paper uses 1e-3)")
    modules = values.get("lora_target_modules") or []
    if "lm_head" in ([modules] if isinstance(modules, str) else modules):
        fail("lora_target_modules", "TRL computes log-probs from lm_head.weight directly; an adapter there is never trained")
    checkpoint = values.get("resume_from_checkpoint")
    if checkpoint and not (Path(checkpoint) / "trainer_state.json").is_file():
        fail("resume_from_checkpoint", "no complete checkpoint there (no trainer_state.json)")


def last_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint written to the end: trainer_state.json comes last, so a save cut short has none."""
    steps = [(int(path.name.removeprefix("checkpoint-")), path) for path in Path(folder).glob("checkpoint-*")
             if path.name.removeprefix("checkpoint-").isdigit() and (path / "trainer_state.json").is_file()]
    return max(steps)[1] if steps else None


def load_pairs(path: str | Path):
    """The prompt/chosen/rejected columns of a conversational preference JSONL; the export's provenance is dropped."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    try:
        dataset = load_dataset("json", data_files=str(path), split="train")
    except DatasetGenerationError as exc:
        raise ValueError(f"{path}: {exc.__cause__ or exc}") from exc
    missing = sorted({"prompt", "chosen", "rejected"} - set(dataset.column_names))
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} column (TRL's conversational preference format)")
    dataset = dataset.select_columns(["prompt", "chosen", "rejected"])
    for line, row in enumerate(dataset, 1):
        problem = _pair_problem(row)
        if problem:
            raise ValueError(f"{path}:{line}: {problem}")
    if len(dataset) == 0:
        raise ValueError(f"{path}: no preference pairs")
    if dataset[0]["prompt"][0]["role"] != "system":
        logger.warning("%s: the prompts have no system message; some chat templates then insert their own", path)
    return dataset


def _pair_problem(row: dict[str, Any]) -> str | None:
    def messages(value) -> bool:
        return isinstance(value, list) and bool(value) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)

    if not messages(row["prompt"]) or row["prompt"][-1]["role"] != "user":
        return "'prompt' must be a list of messages ending with a user message"
    for key in ("chosen", "rejected"):
        if not messages(row[key]) or [m["role"] for m in row[key]] != ["assistant"]:
            return f"{key!r} must hold exactly one assistant message"
    return None


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


def _say(on_log: Callable[[dict], None] | None, main_process: bool, message: str) -> None:
    """Tell ``on_log`` where the run stands between logging steps (kind "status"), so a page follows the log."""
    if on_log is not None and main_process:
        on_log({"kind": "status", "message": message})


def _progress(on_log: Callable[[dict], None] | None, should_stop: Callable[[], bool] | None):
    """A TrainerCallback that reports each logging step to ``on_log`` and stops when ``should_stop()`` says so."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        cancelled = False
        started = time.monotonic()
        first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.first_step = time.monotonic(), state.global_step  # > 0 when resuming
            _say(on_log, state.is_world_process_zero,
                 f"training: step {state.global_step + 1} of {state.max_steps} under way")

        def on_step_end(self, args, state, control, **kwargs):
            if should_stop is not None and should_stop():
                # Checkpoint and log the step it stops at, so the run can resume from there.
                self.cancelled = control.should_training_stop = control.should_save = control.should_log = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log is None or not logs or not state.is_world_process_zero:
                return
            kind = "train" if "loss" in logs else "eval" if any(k.startswith("eval_") for k in logs) else None
            if kind is None:
                return  # the end-of-training summary goes into TrainResult
            elapsed = time.monotonic() - self.started
            done, remaining = state.global_step - self.first_step, max(state.max_steps - state.global_step, 0)
            entry = {"kind": kind, "step": state.global_step, "total_steps": state.max_steps,
                     "epoch": logs.get("epoch", state.epoch), "elapsed_s": round(elapsed, 3),
                     "eta_s": round(elapsed / done * remaining, 3) if done > 0 else None}
            if kind == "train":
                entry.update({key: logs.get(key) for key in TRAIN_LOG_KEYS})
            on_log({**entry, **{k: v for k, v in logs.items() if k not in entry}})

    return Progress()


def _peft_config(model_args):
    from trl import get_peft_config

    peft_config = get_peft_config(model_args)
    # ModelConfig turns a one-item list into a string, which PEFT reads as a regex over whole module paths.
    if peft_config is not None and isinstance(peft_config.target_modules, str) \
            and re.fullmatch(r"\w+", peft_config.target_modules):
        peft_config.target_modules = {peft_config.target_modules}
    return peft_config


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def train(script_args: ScriptArguments, training_args, model_args, on_log: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Run DPO + LoRA as configured and save what the module docstring lists in ``output_dir``.

    ``on_log(entry)`` gets every logging step (kind "train" or "eval", step, total_steps, epoch, elapsed_s,
    eta_s, loss, rewards/*, learning_rate and whatever else TRL logged), and where the run stands between them
    (kind "status", message), on the main process only.
    ``should_stop()`` is asked after every optimiser step; True checkpoints that step and ends the run as
    cancelled. Exceptions propagate once metrics.json records the failure. Under ``accelerate launch`` every
    process runs this; only the main one writes files.
    """
    import json

    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import DPOTrainer

    from .models import load_tokenizer, resolve_model

    values = config_values(script_args, training_args, model_args)
    check(values)
    if should_stop is not None and training_args.world_size > 1:
        raise ValueError("should_stop: only a single-process run can be stopped from outside")
    out = Path(training_args.output_dir)
    main_process = training_args.process_index == 0
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / CONFIG_FILE, f"# python -m training.ml.dpo --config {CONFIG_FILE} runs this again\n"
               + yaml.safe_dump(values, sort_keys=False))

    started = time.monotonic()
    metrics: dict[str, Any] = {"status": "running", "log_history": []}
    trainer = None
    try:
        # Load the model and tokenizer
        model_path = resolve_model(model_args.model_name_or_path, script_args.cache_root)
        tokenizer = load_tokenizer(model_path)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, revision=model_args.model_revision, dtype=model_args.dtype,
            attn_implementation=model_args.attn_implementation, trust_remote_code=training_args.trust_remote_code)
        _say(on_log, main_process, "model loaded; preparing the pairs (tokenizing every prompt)")

        # Load the dataset
        with training_args.main_process_first(desc="loading the pairs"):
            train_dataset = load_pairs(script_args.dataset_path)
            evaluate = script_args.eval_dataset_path and training_args.eval_strategy != "no"
            eval_dataset = load_pairs(script_args.eval_dataset_path) if evaluate else None
        if script_args.eval_dataset_path and not evaluate:
            logger.warning("eval_dataset_path is not evaluated: eval_strategy is 'no'")

        # Initialize the DPO trainer: with a peft_config and no ref_model, the base with its adapter disabled is
        # the reference, so one copy of the weights is in memory.
        progress = _progress(on_log, should_stop)
        trainer = DPOTrainer(model=model, ref_model=None, args=training_args, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, processing_class=tokenizer,
                             peft_config=_peft_config(model_args), callbacks=[progress])
        trainer.remove_callback(PrinterCallback)  # with tqdm off it prints every raw log dict; on_log reports
        if len(trainer.train_dataset) == 0:
            raise ValueError(f"max_length: every prompt is at least {training_args.max_length} tokens long, so no "
                             "pair is left to train on; raise max_length")

        # Train
        checkpoint = training_args.resume_from_checkpoint or (last_checkpoint(out) if script_args.resume else None)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

        # Save
        state = trainer.state
        cancelled = progress.cancelled and state.global_step < state.max_steps
        if not cancelled:
            trainer.save_model(str(out))
            if script_args.merge and main_process:
                merge_adapter(model_path, out, out / MERGED_DIR, dtype=model_args.dtype)
        metrics.update(status="cancelled" if cancelled else "completed", global_step=state.global_step,
                       max_steps=state.max_steps, train_loss=output.training_loss, train_metrics=output.metrics,
                       device=training_args.device.type, processes=training_args.world_size,
                       backend=training_args.distributed_state.backend,
                       model_path=model_path, train_pairs=len(trainer.train_dataset), log_history=state.log_history)
        newest = last_checkpoint(out)
        return TrainResult(output_dir=str(out), adapter_dir=None if cancelled else str(out), cancelled=cancelled,
                           global_step=state.global_step, max_steps=state.max_steps, train_loss=output.training_loss,
                           last_checkpoint=str(newest) if newest else None, elapsed_s=time.monotonic() - started,
                           log_history=list(state.log_history))
    except BaseException as exc:
        metrics.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        if trainer is not None:
            metrics.update(log_history=trainer.state.log_history, global_step=trainer.state.global_step)
        raise
    finally:
        metrics["elapsed_s"] = round(time.monotonic() - started, 3)
        if main_process:
            _write(out / METRICS_FILE, json.dumps(metrics, indent=2, default=str))
        if trainer is not None:
            trainer.end()  # finish the trackers and destroy the process group


def merge_adapter(base: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  cache_root: str | Path | None = None, dtype: str = "bfloat16") -> Path:
    """Save base + LoRA adapter as one standalone model (with the tokenizer) in ``out_dir``.

    ``base`` is what :func:`training.ml.models.resolve_model` takes ("default" works). Written to a temporary
    folder and renamed, so ``out_dir`` is either complete or absent.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .models import load_tokenizer, resolve_model

    base_path = resolve_model(str(base), cache_root or _default_cache_root())
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        load_tokenizer(base_path).save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _print_log(entry: dict[str, Any]) -> None:
    def fmt(key: str, spec: str = ".4f") -> str:
        value = entry.get(key)
        return "-" if value is None else format(value, spec)

    if entry["kind"] == "status":
        print(entry["message"], flush=True)
        return
    if entry["kind"] == "eval":
        print(f"eval  step {entry['step']}/{entry['total_steps']} loss {fmt('eval_loss')} "
              f"acc {fmt('eval_rewards/accuracies', '.2f')}", flush=True)
        return
    print(f"step {entry['step']}/{entry['total_steps']} epoch {fmt('epoch', '.2f')} loss {fmt('loss')} "
          f"acc {fmt('rewards/accuracies', '.2f')} margin {fmt('rewards/margins')} lr {fmt('learning_rate', '.2e')} "
          f"elapsed {entry['elapsed_s']:.0f}s eta {fmt('eta_s', '.0f')}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    try:
        check(config_values(script_args, training_args, model_args))
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    result = train(script_args, training_args, model_args, on_log=_print_log)
    if training_args.process_index == 0:
        print(f"{'cancelled' if result.cancelled else 'done'}: {result.global_step}/{result.max_steps} steps, "
              f"{result.elapsed_s:.0f}s, adapter {result.adapter_dir or '-'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
