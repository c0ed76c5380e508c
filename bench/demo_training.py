"""A longer DPO run on the demo data: what it does to the default model's valid-profile rate and win rate.

    .venv/bin/python bench/demo_training.py                       # 100 steps, 4 candidates per held-out sample
    .venv/bin/python bench/demo_training.py --steps 40 --candidates 8
    .venv/bin/python bench/demo_training.py --quick               # tiny sizes: a smoke run of every step

The whole loop on a throw-away database, through CompX's own entry points, each step timed:

1. seed:     ``manage.py seed_demo`` (the bundled abstracts grouped by first author, held-out split)
             and ``annotation.demo.ensure_demo_objects`` (the demo generator: guided, temperature 0.5,
             256 tokens, 4 candidates; the demo's local judge).
2. generate: ``start_generation`` for every train sample with the demo generator.
3. label:    a SIMULATED EXPERT (see ``simulated_expert_labels``): in every pair of candidates of one sample
             a valid profile beats an invalid one; two valid or two invalid profiles get no label. The demo
             has no expert votes, and its offline judge only repeats the presentation order, so this is the
             one preference signal it has. The labels go in as real votes through the label import
             (``annotation.documents.labels.import_votes``, the path for labels made elsewhere).
4. export:   ``start_export`` with the expert policy, JSONL in TRL's format (no test split: every pair trains).
5. train:    ``start_training`` (the admin's form) on the default model: DPO + LoRA with the admin's CPU
             defaults except ``--steps``, ``--grad-accum``, ``--seed`` and gradient checkpointing (see TRAINING).
6. evaluate: ``start_evaluation`` (the admin's "Evaluate" form): tuned vs base on ALL held-out samples,
             ``--candidates`` profiles each, the demo judge in both orders. The tuned model copies the demo
             generator's decoding, so the two differ only by the adapter.

Celery runs eagerly: each task runs in this process, inside the call that queues it, through the same task
function a worker runs (no broker, no worker). Prints each step's wall seconds, the labelled pairs, the
training loss at start and end with the reward accuracy, and the evaluation's own results: each model's
valid-profile rate with a Wilson 95% interval, wins / ties / losses, and the win rate with its interval over
the judged pairs and over all pairs including forfeits (an invalid profile loses without a judge).

Cost, measured on two shared CPU cores (load average 3–5): seeding 2 s, generation ~170 s, one DPO step
60–120 s (a pair of ~1,800 tokens: the demo prompts alone are 1,200–1,600), the evaluation with 4 candidates
~170 s. ``--steps 30`` took 46 minutes in all; the default 100 steps would take about two and a half hours
there, a few minutes on a GPU. ``--quick`` takes about 15 minutes on such a machine.

The database is a SQLite file in a new temporary folder (under ``$COMPX_VAR_DIR`` when set) unless
``--database-url`` names another (it must be empty: the run seeds it). Generation uses the product's fixed
decoding seed; ``--seed`` seeds training.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIMULATED_EXPERT = "simulated-expert"
SIMULATED_CAMPAIGN = "Simulated expert: a valid profile beats an invalid one"
# The admin's CPU defaults (training.runs.CPU_DEFAULTS) hold, except: one pair per optimiser step (the demo
# has only a few dozen pairs, and a step is then ~half as long), and no gradient checkpointing (at ~1,800
# tokens a pair fits in a few GB without it, and each step is faster).
TRAINING = {"activation_checkpointing": False, "save_steps": 25}

STEP_SECONDS: dict[str, float] = {}


@contextmanager
def step(name: str):
    """Print the step's name, then its wall seconds; keep them for the summary."""
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    yield
    STEP_SECONDS[name] = time.perf_counter() - start
    print(f"-- {name}: {STEP_SECONDS[name]:.1f} s", flush=True)


def setup_django(database_url: str | None, workdir: Path) -> None:
    from bench.training import setup_django as migrated  # the same database setup as the training benchmark

    migrated(database_url, workdir)
    from compx_site.celery import app

    # Tasks run in this process when queued; their exceptions reach this script.
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    import datasets
    import transformers

    # Weight-loading and dataset-map progress bars would drown the figures in a log file.
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


# ---------------------------------------------------------------------------------------------------------
# 1. seed


def seed(quick: bool):
    from django.core.management import call_command

    from annotation.demo import ensure_demo_objects
    from annotation.models import Sample, Split

    out = io.StringIO()  # seed_demo also prints fresh passwords: not for a log
    call_command("seed_demo", stdout=out)
    print(out.getvalue().splitlines()[0])
    generator, judge, _ = ensure_demo_objects()
    train = Sample.objects.filter(split=Split.TRAIN).order_by("pk")
    heldout = Sample.objects.filter(split=Split.HELDOUT).order_by("pk")
    if quick:
        train, heldout = train[:3], heldout[:1]
    print(f"{train.count()} train and {heldout.count()} held-out samples; generator {generator.name} "
          f"(temperature {generator.temperature}, {generator.max_new_tokens} tokens, {generator.candidates} "
          f"candidates, format guide {'on' if generator.format_guide else 'off'}); judge {judge.name}")
    return generator, judge, train, heldout


# ---------------------------------------------------------------------------------------------------------
# 2. generate


def generate(generator, samples) -> None:
    from annotation.start import start_generation

    job = start_generation(generator, samples)
    job.refresh_from_db()
    if job.status != "succeeded":
        raise SystemExit(f"generation {job.status}: {job.error}")
    tokens = job.stats.get("tokens")
    print(f"{job.message}" + (f"; {tokens} completion tokens" if tokens else ""))


# ---------------------------------------------------------------------------------------------------------
# 3. label


def simulated_expert_labels(generator, samples) -> tuple[list[dict], dict[str, int]]:
    """Label-import rows for every pair of one sample's candidates where exactly one profile is valid.

    The simulated expert prefers the valid profile; two valid or two invalid profiles are skipped (no vote).
    Returns the rows and the counts of labelled and skipped pairs.
    """
    from annotation.models import Profile

    rows, counts = [], {"labelled": 0, "both_valid": 0, "both_invalid": 0}
    for sample in samples:
        profiles = list(Profile.objects.filter(sample=sample, generator=generator).order_by("candidate_index"))
        for i, first in enumerate(profiles):
            for second in profiles[i + 1:]:
                if first.is_valid == second.is_valid:
                    counts["both_valid" if first.is_valid else "both_invalid"] += 1
                    continue
                counts["labelled"] += 1
                rows.append({
                    "sample": sample.name, "expert": SIMULATED_EXPERT, "choice": "a" if first.is_valid else "b",
                    "a": {"generator": generator.name, "candidate": first.candidate_index},
                    "b": {"generator": generator.name, "candidate": second.candidate_index},
                    "rationale": "simulated expert: the valid profile beats the invalid one",
                })
    return rows, counts


def label(generator, samples, workdir: Path):
    from annotation.documents.labels import import_votes
    from annotation.models import Campaign, Profile

    profiles = Profile.objects.filter(generator=generator, sample__in=samples)
    valid = profiles.filter(is_valid=True).count()
    print(f"train candidates: {valid} of {profiles.count()} valid")
    rows, counts = simulated_expert_labels(generator, samples)
    print(f"pairs of candidates: {counts['labelled']} labelled (valid beats invalid), skipped "
          f"{counts['both_valid']} with both valid and {counts['both_invalid']} with both invalid")
    if not rows:
        raise SystemExit("no pair has exactly one valid profile: nothing to train on")
    path = workdir / "simulated_expert_votes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"label import: {import_votes(path, SIMULATED_CAMPAIGN).summary()}")
    return Campaign.objects.get(name=SIMULATED_CAMPAIGN)


# ---------------------------------------------------------------------------------------------------------
# 4. export


def export(campaign):
    from annotation.start import start_export
    from annotation.models import DatasetExport, ExportFormat, ExportPolicy

    dataset = DatasetExport.objects.create(name="demo simulated expert", policy=ExportPolicy.EXPERT,
                                           format=ExportFormat.JSONL, campaign=campaign, test_fraction=0.0)
    job = start_export(dataset)
    dataset.refresh_from_db()
    job.refresh_from_db()
    if dataset.status != "succeeded":
        raise SystemExit(f"export {dataset.status}: {dataset.error}")
    dropped = {k: v for k, v in dataset.counts.get("dropped", {}).items() if v}
    print(f"{job.message}; dropped: {dropped or 'none'}; {dataset.path}")
    return dataset


# ---------------------------------------------------------------------------------------------------------
# 5. train


def train(dataset, steps: int, grad_accum: int, seed_value: int):
    from training.start import start_training

    values = {**TRAINING, "max_steps": steps, "gradient_accumulation_steps": grad_accum, "seed": seed_value}
    run = start_training(dataset, values, name="demo simulated expert")
    run.refresh_from_db()
    config = run.config
    print(f"config: {steps} steps, batch {config['per_device_train_batch_size']} x accumulation "
          f"{config['gradient_accumulation_steps']}, max_length {config['max_length']}, lr {config['learning_rate']}, "
          f"LoRA r {config['lora_r']}, beta {config['beta']}, precision {config.get('dtype', 'auto')}, "
          f"checkpointing {config['activation_checkpointing']}, seed {config['seed']}")
    if run.status != "succeeded":
        raise SystemExit(f"training {run.status}: {run.error}")
    print_training(run)
    return run


def print_training(run) -> None:
    entries = list(run.log_entries.order_by("step"))
    losses = [e.loss for e in entries if e.loss is not None]
    accuracies = [e.reward_accuracy for e in entries if e.reward_accuracy is not None]
    margins = [e.reward_margin for e in entries if e.reward_margin is not None]
    tail = max(1, len(entries) // 10)  # the last tenth of the steps: one step's figures are noisy
    elapsed = run.latest_metrics.get("elapsed_s")
    print(f"{run.message}")
    print(f"loss: step 1 {losses[0]:.4f}, last {losses[-1]:.4f}, mean of the last {tail} steps "
          f"{statistics.mean(losses[-tail:]):.4f}")
    print(f"reward accuracy: mean of the first {tail} steps {statistics.mean(accuracies[:tail]):.2f}, "
          f"of the last {tail} {statistics.mean(accuracies[-tail:]):.2f}; reward margin last {tail} "
          f"{statistics.mean(margins[-tail:]):.3f}")
    if elapsed:
        print(f"train() took {elapsed:.0f} s = {elapsed / max(1, run.done):.1f} s per step (model load included)")


# ---------------------------------------------------------------------------------------------------------
# 6. evaluate


def evaluate(run, generator, judge, heldout, candidates: int):
    from training.start import start_evaluation

    evaluation = start_evaluation(judge, training_run=run, baseline=generator, sample_limit=heldout.count(),
                                  candidates=candidates, name="demo simulated expert")
    evaluation.refresh_from_db()
    if evaluation.status != "succeeded":
        raise SystemExit(f"evaluation {evaluation.status}: {evaluation.error or evaluation.message}")
    print_evaluation(evaluation)
    return evaluation


def _ci(ci: list) -> str:
    return "[–]" if ci[0] is None else f"[{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]"


def _rate(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def print_evaluation(evaluation) -> None:
    results = evaluation.results
    print(f"{results['samples']} held-out samples x {results['candidates']} candidates per model")
    for role, figures in results["valid"].items():
        print(f"valid profiles, {role} ({figures['generator']}): {figures['valid']}/{figures['total']} = "
              f"{_rate(figures['rate'])} {_ci(figures['ci'])}")
    for role, versus in results["versus"].items():
        print(f"tuned vs {role} ({versus['opponent']}):")
        for kind in ("judged", "forfeits", "with_forfeits"):
            s = versus[kind]
            print(f"  {kind:13s} n {s['n']:3d}: {s['wins']} wins / {s['ties']} ties / {s['losses']} losses "
                  f"({s['inconsistent']} of the ties flipped with the order, {s['invalid']} invalid) -> win rate "
                  f"{_rate(s['win_rate'])} {_ci(s['ci'])}")
    print(f"headline: {evaluation.message}")


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="DPO optimiser steps (default 100)")
    parser.add_argument("--grad-accum", type=int, default=1, help="pairs per optimiser step (default 1)")
    parser.add_argument("--candidates", type=int, default=4, help="profiles per held-out sample and model (default 4)")
    parser.add_argument("--database-url", help="an empty database; default: a throw-away SQLite file")
    parser.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 train samples, 1 held-out sample, 2 steps, 1 candidate")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.candidates = 2, 1
    sys.stdout.reconfigure(line_buffering=True)

    base = os.environ.get("COMPX_VAR_DIR")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="compx-demo-training-", dir=base))
    setup_django(args.database_url, workdir)
    from django.conf import settings

    started = time.perf_counter()
    print(f"start: {load()}; database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
          f"folder {workdir}")
    with step("1. seed"):
        generator, judge, train_samples, heldout = seed(args.quick)
    with step("2. generate train candidates"):
        generate(generator, train_samples)
    with step("3. label (simulated expert)"):
        campaign = label(generator, train_samples, workdir)
    with step("4. export"):
        dataset = export(campaign)
    with step("5. train"):
        run = train(dataset, args.steps, args.grad_accum, args.seed)
    with step("6. evaluate tuned vs base"):
        evaluate(run, generator, judge, heldout, args.candidates)

    print("\n== durations: " + ", ".join(f"{name.split(' ', 1)[1]} {s:.0f} s" for name, s in STEP_SECONDS.items())
          + f"; total {time.perf_counter() - started:.0f} s")
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
