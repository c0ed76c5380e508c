"""One round of the loop end to end on the demo abstracts: does the tuned model beat its base, by whom, and how?

    .venv/bin/python bench/round.py                  # the cpu preset: ≤ 60 minutes on two cores
    .venv/bin/python bench/round.py --preset gpu     # on a GPU box
    .venv/bin/python bench/round.py --smoke          # the tiny preset: every step at toy sizes (a test runs it)
    .venv/bin/python bench/round.py --steps 60 --beta 0.2 --label-margin 0.08   # a lever, recorded as given

On a throw-away database (a SQLite file in a new temporary folder unless ``--database-url``): the bundled demo
abstracts imported with the preset's abstracts per sample (cpu: 2, so prompts are short) and a held-out
fraction, then ``manage.py run_round``'s own path (``training.start.start_round`` + ``training.round.run_round``
inline): generate → label with the SmolLM2 PMI judge at a high tie margin → export the decided pairs → DPO +
LoRA → tuned vs base on the held-out samples, graded by the independent Gemma 3 270M PMI judge and,
reported apart, by the labelling judge.

Prints the pairs labelled, the DPO steps, each judge's win rate of tuned over base with its Wilson 95%
interval and n (held-out pairs with both profiles valid), each model's validity, length and copy share,
and each step's wall time. The target (issue 15): the independent judge prefers tuned on ≥ 80% of decided
pairs with the interval's lower bound ≥ 70%, with no rise in copy share that explains it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HELDOUT_FRACTION = 0.4


def setup(database_url: str | None, workdir: Path) -> None:
    from bench.training import setup_django

    setup_django(database_url, workdir)
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def seed(preset, heldout_fraction: float) -> str:
    from annotation.documents.importing import ImportOptions, import_documents
    from annotation.management.commands.seed_demo import DEMO_FILE
    from annotation.models import Sample, Split

    result = import_documents(DEMO_FILE, ImportOptions(group_by="author", sample_size=preset.abstracts_per_sample,
                                                       heldout_fraction=heldout_fraction))
    train = Sample.objects.filter(split=Split.TRAIN).count()
    heldout = Sample.objects.filter(split=Split.HELDOUT).count()
    return (f"{result.summary()}; {preset.abstracts_per_sample} abstracts per sample: {train} train and "
            f"{heldout} held-out samples")


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _ci(ci) -> str:
    return "[–]" if not ci or ci[0] is None else f"[{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]"


def _mean(figure, unit: str = "") -> str:
    if figure["mean"] is None:
        return "–"
    lo, hi = figure["ci"]
    interval = "" if lo is None else f" [{lo:.1f}, {hi:.1f}]"
    return f"{figure['mean']:.1f}{unit}{interval}"


def report(row) -> list[str]:
    """The round's figures as lines of text."""
    r = row.results
    lines = [f"pairs labelled (training pairs): {r['pairs_labelled']} of {r['comparisons']} pairs judged; "
             f"dropped: { {k: v for k, v in (r.get('dropped') or {}).items() if v} or 'none'}",
             f"DPO steps: {r['steps']}; last loss {r['loss']}, reward accuracy {r['reward_accuracy']}",
             f"held-out samples: {r['heldout_samples']}",
             "tuned vs base, held-out pairs with both profiles valid (ties count half):"]
    for judge in r["judges"]:
        judged = judge["versus"]["baseline"]["judged"]
        overall = judge["versus"]["baseline"]["with_forfeits"]
        role = "LABELLED THE TRAINING DATA (not independent)" if judge["labelled_training_data"] else "independent"
        lines.append(f"  {judge['judge']} ({role}): {judged['wins']} wins / {judged['ties']} ties / "
                     f"{judged['losses']} losses, n {judged['n']} -> {_pct(judged['win_rate'])} {_ci(judged['ci'])}"
                     f"; decided pairs only: {_decided(judged)}; with forfeits {_pct(overall['win_rate'])} "
                     f"{_ci(overall['ci'])} n {overall['n']}")
    for role, label in (("candidate", "tuned"), ("baseline", "base")):
        v, p = r["valid"][role], r["profiles"][role]
        lines.append(f"  {label}: valid {v['valid']}/{v['total']} = {_pct(v['rate'])} {_ci(v['ci'])}; words "
                     f"{_mean(p['words'])}; competencies {_mean(p['competencies'])}; copied from the abstracts "
                     f"(runs of ≥ {p['copy_span_words']} words) {_pct(p['copy_share']['mean'])} "
                     f"{_ci(p['copy_share']['ci'])} n {p['copy_share']['n']}")
    seconds = r["seconds"]
    lines.append("seconds: " + ", ".join(f"{step} {s:.0f}" for step, s in seconds.items())
                 + f"; total {sum(seconds.values()):.0f}")
    return lines


def _decided(judged) -> str:
    """Wins among the pairs the judge decided (ties left out), with a Wilson interval: the issue's target."""
    from annotation.stats import wilson_interval

    decided = judged["wins"] + judged["losses"]
    if not decided:
        return "none decided"
    lo, hi = wilson_interval(judged["wins"], decided)
    return f"{judged['wins']}/{decided} = {_pct(judged['wins'] / decided)} [{100 * lo:.0f}%, {100 * hi:.0f}%]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"])
    parser.add_argument("--smoke", action="store_true", help="the tiny preset on 2 train and 1 held-out sample")
    parser.add_argument("--database-url", help="an empty database; default: a throw-away SQLite file")
    parser.add_argument("--heldout-fraction", type=float, default=HELDOUT_FRACTION)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 is faster "
                                                               "on a loaded two-core machine")
    for option, kind in (("--steps", int), ("--beta", float), ("--learning-rate", float), ("--lora-r", int),
                         ("--label-margin", float), ("--candidates", int), ("--eval-candidates", int),
                         ("--max-new-tokens", int), ("--train-samples", int), ("--heldout-samples", int)):
        parser.add_argument(option, type=kind)
    parser.add_argument("--policy", choices=["high_margin", "agree"])
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset = "tiny"
    sys.stdout.reconfigure(line_buffering=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    base = os.environ.get("COMPX_VAR_DIR")
    workdir = Path(tempfile.mkdtemp(prefix="compx-round-", dir=base if base and Path(base).is_dir() else None))
    setup(args.database_url, workdir)
    from training.management.commands.run_round import preset_from
    from training.round import run_round
    from training.start import start_round

    preset = preset_from({**vars(args), "preset": args.preset})
    started = time.perf_counter()
    print(f"preset {preset.name}: {preset.to_dict()}")
    print(seed(preset, args.heldout_fraction))
    row = start_round(preset, queue=False)
    print(f"generator {row.generator.name}; labelled by "
          f"{', '.join(j.name for j in row.labelling_panel.judges.all())}; graded by {row.evaluation_judge.name}")
    status = run_round(row.pk, inline=True)
    row.refresh_from_db()
    if status != "succeeded":
        print(f"round {status}: {row.error or row.message}")
        return 1
    for line in report(row):
        print(line)
    print(f"headline: {row.message}")
    print(f"wall time {time.perf_counter() - started:.0f} s; workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
