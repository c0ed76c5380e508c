"""Training overhead: the same DPO steps through CompX's worker path and through a bare TRL script.

    .venv/bin/python bench/training.py [--steps 8] [--pairs 16] [--repeats 2] [--json out.json]
    .venv/bin/python bench/training.py --smoke   # CI: 1 step on 1 pair, each path once, no warm-up

CompX's path is what a Celery training worker runs: ``training.runs.run_training(run_id)`` — claim the run,
train through ``training.ml.dpo.train`` with ``on_log`` / ``should_stop`` bound to the database (buffered
progress rows, the cancel poll, a heartbeat thread, the run's log file), record the result. The bare path
is the few lines of a TRL example script: load the model, ``load_dataset("json")``, ``DPOTrainer(...,
peft_config=LoraConfig(...)).train()``, save the adapter. Both use the offline SmolLM2-135M on the same
pairs with the same seed and hyper-parameters, so they do the same work (the final losses are printed
side by side) and the time ratio is the cost of everything CompX adds. Goal: <= 1.03.

The database is a throw-away SQLite file (migrated at start) unless ``--database-url`` names another.
Runs alternate bare / CompX / CompX / bare ... so drift in machine load falls on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SYSTEM = ("You are an expert in analysing scientific literature. Describe the researcher's research domain and "
          "the competencies that these abstracts show, in the Domain / Competencies format.")
TOPICS = [
    ("protein structure refinement", "a message-passing network that refines predicted protein backbones"),
    ("legume nitrogen fixation", "symbiotic nitrogen fixation measured at twelve field sites with isotopes"),
    ("galaxy cluster weak lensing", "cluster masses inferred from shear catalogues with a hierarchical model"),
    ("dialect speech recognition", "a self-supervised acoustic model fine-tuned on Swiss German dialects"),
]


def write_pairs(path: Path, n: int) -> None:
    """n preference pairs of ~200 tokens each: a valid profile over a junk answer, as an export writes them."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            topic, finding = TOPICS[i % len(TOPICS)]
            user = (f"Abstract 1: {topic.capitalize()} (study {i})\nWe present {finding}. The method is evaluated "
                    "on held-out data, compared with two baselines, and its limitations are discussed.")
            chosen = (f'Domain: "{topic}"\n\nCompetencies:\n- Method development: designs {finding}.\n'
                      f"- Evaluation: tests the method on held-out data against baselines.\n"
                      f"- Critical analysis: discusses the limitations of the {topic} results.")
            rejected = f"Domain: {topic}\n\ndef solve():\n    return 42  # TODO {i}"
            fh.write(json.dumps({
                "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "comparison_id": i, "source": "experts", "policy": "expert",
            }) + "\n")


def bare_trl(model_dir: str, data: Path, out: Path, hp: dict) -> tuple[float, float]:
    """A plain TRL script; returns (last logged loss, global steps)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = load_dataset("json", data_files=str(data), split="train")
    dataset = dataset.select_columns(["prompt", "chosen", "rejected"])
    args = DPOConfig(
        output_dir=str(out), learning_rate=hp["learning_rate"], bf16=False, fp16=False,
        gradient_checkpointing=False, activation_checkpointing=False, use_cpu=True, dataloader_pin_memory=False,
        report_to="none", disable_tqdm=True, beta=hp["beta"], loss_type=["sigmoid"], max_length=hp["max_length"],
        max_steps=hp["max_steps"], per_device_train_batch_size=hp["per_device_train_batch_size"],
        gradient_accumulation_steps=1, seed=hp["seed"], logging_steps=1, save_strategy="no",
    )
    peft_config = LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                             target_modules=hp["lora_target_modules"], bias="none", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(out))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses[-1], trainer.state.global_step


def setup_django(database_url: str | None, workdir: Path) -> None:
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["MEDIA_ROOT"] = str(workdir / "media")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "compx_site.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


CALLBACK_S = [0.0]  # wall time spent inside CompX's progress callbacks (on_log, should_stop), all runs


def instrument_callbacks() -> None:
    """Time RunProgress's callbacks: the part of CompX's overhead that sits inside the training loop.

    Unlike the end-to-end ratio this does not drown in the noise of a shared machine.
    """
    from training.runs import RunProgress

    for name in ("on_log", "should_stop"):
        original = getattr(RunProgress, name)

        def timed(self, *args, _original=original):
            start = time.perf_counter()
            try:
                return _original(self, *args)
            finally:
                CALLBACK_S[0] += time.perf_counter() - start

        setattr(RunProgress, name, timed)


def compx_run(data_dir: Path, hp: dict, name: str) -> tuple[float, int]:
    """What the training worker does for one run; returns (last logged loss, global steps)."""
    from annotation.models import DatasetExport, JobStatus
    from training.runs import run_training
    from training.start import start_training

    export, _ = DatasetExport.objects.get_or_create(
        name="bench", defaults={"policy": "expert", "status": JobStatus.SUCCEEDED, "path": str(data_dir)})
    run = start_training(export, hp, name=name, queue=False)
    status = run_training(run.pk, worker="bench")
    run.refresh_from_db()
    if status != "succeeded":
        raise SystemExit(f"CompX run failed: {run.error}")
    return run.log_entries.order_by("-step").first().loss, run.done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="DPO optimiser steps per run (default 8)")
    parser.add_argument("--pairs", type=int, default=16, help="preference pairs in the dataset (default 16)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (default 2)")
    parser.add_argument("--database-url", help="default: a throw-away SQLite file")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--smoke", action="store_true",
                        help="CI size: --steps 1 --pairs 1 --batch-size 1 --repeats 1 --max-length 320, no warm-up")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.pairs, args.batch_size, args.repeats, args.max_length = 1, 1, 1, 1, 320
    sys.stdout.reconfigure(line_buffering=True)

    workdir = Path(tempfile.mkdtemp(prefix="compx-bench-training-"))
    setup_django(args.database_url, workdir)
    from django.conf import settings

    from training.ml.models import default_model_dir

    model_dir = str(default_model_dir(settings.MODEL_CACHE_DIR))
    data_dir = workdir / "export"
    data_dir.mkdir()
    write_pairs(data_dir / "train.jsonl", args.pairs)
    hp = {"model_name_or_path": model_dir, "max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
          "gradient_accumulation_steps": 1, "max_length": args.max_length, "bf16": False, "dtype": "float32",
          "activation_checkpointing": False, "learning_rate": 5e-5, "beta": 0.1, "lora_r": 16, "lora_alpha": 32,
          "lora_dropout": 0.05, "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "seed": 42,
          "save_steps": 10_000, "logging_steps": 1}
    print(f"{args.steps} DPO steps, batch {args.batch_size}, max_length {args.max_length}, {args.pairs} pairs, "
          f"model {model_dir}, database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")

    instrument_callbacks()
    if not args.smoke:  # warm-up: file cache, torch kernels, dataset cache; not timed
        bare_trl(model_dir, data_dir / "train.jsonl", workdir / "warmup", {**hp, "max_steps": 1})

    times: dict[str, list[tuple[float, float]]] = {"bare": [], "compx": []}
    results: dict[str, tuple[float, int]] = {}
    order = [("bare", "compx")[(i // 2 + i) % 2] for i in range(2 * args.repeats)]  # bare compx compx bare …
    load_before = os.getloadavg()[0]
    for i, path in enumerate(order):
        start, cpu = time.perf_counter(), time.process_time()
        if path == "bare":
            results[path] = bare_trl(model_dir, data_dir / "train.jsonl", workdir / f"bare-{i}", hp)
        else:
            results[path] = compx_run(data_dir, hp, f"bench {i}")
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        times[path].append((wall, cpu))
        print(f"{path:5s}: {wall:6.1f} s wall, {cpu:6.1f} s CPU, {results[path][1]} steps, "
              f"last loss {results[path][0]:.4f}")
    load_after = os.getloadavg()[0]

    bare_wall = statistics.mean(t[0] for t in times["bare"])
    compx_wall = statistics.mean(t[0] for t in times["compx"])
    bare_cpu = statistics.mean(t[1] for t in times["bare"])
    compx_cpu = statistics.mean(t[1] for t in times["compx"])
    ratio, cpu_ratio = compx_wall / bare_wall, compx_cpu / bare_cpu
    print(f"same work: {results['bare'][1]} vs {results['compx'][1]} steps, last loss {results['bare'][0]:.4f} vs "
          f"{results['compx'][0]:.4f}")
    print(f"time ratio CompX / bare TRL: {ratio:.3f} wall ({'goal <= 1.03 met' if ratio <= 1.03 else 'goal <= 1.03 NOT met'})"
          f", {cpu_ratio:.3f} CPU; mean {compx_wall:.1f} s vs {bare_wall:.1f} s per run "
          f"({compx_wall / args.steps:.2f} vs {bare_wall / args.steps:.2f} s per step, model load included)")
    in_loop = CALLBACK_S[0] / sum(t[0] for t in times["compx"])
    print(f"inside the training loop CompX's callbacks (progress rows, heartbeat, cancel poll) took "
          f"{CALLBACK_S[0]:.3f} s of {sum(t[0] for t in times['compx']):.1f} s = {100 * in_loop:.2f}% of the CompX runs")
    if max(load_before, load_after) > (os.cpu_count() or 1):
        print(f"note: load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores; other processes "
              "shared the CPU, so wall-clock numbers are noisy (the CPU ratio is steadier)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"steps": args.steps, "pairs": args.pairs, "batch_size": args.batch_size,
                                         "max_length": args.max_length, "times": times, "ratio": ratio,
                                         "cpu_ratio": cpu_ratio, "callback_s": CALLBACK_S[0], "last_loss": {k: v[0] for k, v in results.items()}},
                                        indent=2))
    (bare_loss, bare_steps), (compx_loss, compx_steps) = results["bare"], results["compx"]
    if bare_steps != compx_steps or abs(bare_loss - compx_loss) > 0.05:
        print("FAILED: the two paths did not do the same work (steps or loss differ)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
