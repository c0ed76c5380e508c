"""Generation throughput and validity: the decoding engines side by side, on the same prompts and seeds.

    nice -n 0 .venv/bin/python bench/generation.py              # 4 demo samples x 4 candidates, 256 tokens
    .venv/bin/python bench/generation.py --against 6341ed8^ --rounds 2   # against the code before the loop
    .venv/bin/python bench/generation.py --samples 2 --max-new-tokens 96 --rounds 2
    .venv/bin/python bench/generation.py --smoke                # seconds: what the test runs

Loads the default offline model (SmolLM2-135M-Instruct, bf16 on CPU), builds the real extraction prompt
for the first ``--samples`` researchers of the demo abstracts and decodes them as the demo's generator does
(format guide on, temperature 0.5, top-p 0.95, repetition penalty 1.15, k candidates per sample) with each
engine: ``generate`` (transformers' ``model.generate`` with the guide as a logits processor, torch's
default threads: the baseline) and ``loop`` (training/ml/decoding.py, the default). The engines alternate
within each round, so both see the same load; every candidate is parsed by the product's strict parser.

``--against GIT_REF`` measures that version's own ``generate_batch`` (its default path, its format guide and
threads) instead of this checkout's ``generate`` engine: "today's" code of issue 19 is ``6341ed8^``, the
commit before the loop engine and the guide's cached masks. Both sides then run in child processes, one
each per round, alternating, and every text is parsed by this checkout's parser.

Prints, per engine: completion tokens per second of wall time and per CPU-second of this process (the
steadier figure when other processes share the cores), threads, valid profiles / candidates with a 95%
Wilson interval; then the ratios loop / generate and the load average. Goal: >= 3x the baseline's tokens/s
at the same validity rate.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._refs import unpack  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO = REPO / "annotation" / "demo_data" / "abstracts.jsonl"
ENGINES = ("generate", "loop")
GOAL = 3.0


def demo_samples(n: int, per_sample: int = 4) -> list[list[tuple[str, str]]]:
    """The demo's grouping: one sample per first author, in file order."""
    by_author: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for line in DEMO.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        authors = row["authors"] if isinstance(row["authors"], list) else row["authors"].split(";")
        by_author[authors[0].strip()].append((row["title"], row["abstract"]))
    return [docs[:per_sample] for docs in by_author.values()][:n]


def run_engine(engine, model, tokenizer, conversations, settings, batch_size):
    """One engine over all conversations: (tokens, wall s, CPU s, valid, n, threads, finished) and the texts."""
    import dataclasses

    import torch

    from annotation.profiles.format import parse_profile
    from training.ml.decoding import cpu_threads
    from training.ml.generate import generate_batch

    # The loop picks its threads per call (from the load); generate runs on torch's default, as today.
    threads = cpu_threads() if engine == "loop" and next(model.parameters()).device.type == "cpu" \
        else torch.get_num_threads()
    start, cpu_start = time.perf_counter(), time.process_time()
    results = generate_batch(model, tokenizer, conversations, dataclasses.replace(settings, engine=engine),
                             batch_size=batch_size)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    candidates = [c for cands in results for c in cands]
    valid = sum(parse_profile(c.text).valid for c in candidates)
    return {
        "tokens": sum(c.completion_tokens for c in candidates), "wall": wall, "cpu": cpu, "valid": valid,
        "n": len(candidates), "threads": threads, "stopped": sum(c.finish_reason == "stop" for c in candidates),
    }, [c.text for c in candidates]


def run_child(tree: Path, args: argparse.Namespace) -> tuple[dict, list[str]]:
    """This bench's ``--child`` mode in a new process, with ``tree``'s code first on the path."""
    command = [sys.executable, __file__, "--child", str(tree), "--samples", str(args.samples), "--candidates",
               str(args.candidates), "--max-new-tokens", str(args.max_new_tokens), "--batch-size",
               str(args.batch_size), "--temperature", str(args.temperature), "--seed", str(args.seed)]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the child on {tree} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.splitlines()[-1])
    from annotation.profiles.format import parse_profile

    texts = result.pop("texts")
    result["valid"] = sum(parse_profile(t).valid for t in texts)
    return result, texts


def child(tree: Path, args: argparse.Namespace) -> int:
    """Generate with ``tree``'s code and print one JSON line: what ``run_engine`` measures, and the texts."""
    sys.path.insert(0, str(tree))
    import dataclasses

    import torch

    from annotation.prompts import build_extraction_messages
    from training.ml.generate import DecodingSettings, generate_batch
    from training.ml.models import get_model

    model, tokenizer = get_model("default", Path(os.environ.get("COMPX_MODEL_CACHE", REPO / "var" / "models")))
    conversations = [build_extraction_messages(docs) for docs in demo_samples(args.samples)]
    known = {f.name for f in dataclasses.fields(DecodingSettings)}
    settings = DecodingSettings(**{k: v for k, v in dict(
        temperature=args.temperature, top_p=0.95, repetition_penalty=1.15, max_new_tokens=args.max_new_tokens,
        num_candidates=args.candidates, seed=args.seed, format_guide=True).items() if k in known})
    generate_batch(model, tokenizer, conversations[:1], DecodingSettings(**{k: v for k, v in dict(
        temperature=0, num_candidates=1, max_new_tokens=4, format_guide=True).items() if k in known}))
    threads = torch.get_num_threads()
    start, cpu_start = time.perf_counter(), time.process_time()
    results = generate_batch(model, tokenizer, conversations, settings, batch_size=args.batch_size)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    candidates = [c for cands in results for c in cands]
    print(json.dumps({"tokens": sum(c.completion_tokens for c in candidates), "wall": wall, "cpu": cpu,
                      "n": len(candidates), "threads": threads,
                      "stopped": sum(c.finish_reason == "stop" for c in candidates),
                      "texts": [c.text for c in candidates]}))
    return 0


def add(total: dict, run: dict) -> None:
    for key, value in run.items():
        total[key] = value if key == "threads" else total.get(key, 0) + value


def describe(engine: str, r: dict) -> str:
    from annotation.stats import wilson_interval

    low, high = wilson_interval(r["valid"], r["n"])
    return (f"{engine:8} {r['tokens']:5} tokens in {r['wall']:6.1f}s = {r['tokens'] / r['wall']:6.1f} tok/s, "
            f"CPU {r['cpu']:6.1f}s = {r['tokens'] / r['cpu']:6.1f} tok/CPU-s, threads {r['threads']}; "
            f"valid {r['valid']}/{r['n']} = {r['valid'] / r['n']:.0%} [95% CI {low:.0%}–{high:.0%}], "
            f"{r['stopped']} ended by themselves")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="demo samples (prompts), default 4")
    parser.add_argument("--candidates", type=int, default=4, help="k candidates per sample (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the demo generator's (default 256)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per call (the worker's: 4)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both engines, alternating (default 1)")
    parser.add_argument("--temperature", type=float, default=0.5, help="the demo generator's (default 0.5)")
    parser.add_argument("--dtype", default=None, help="bf16 / fp32 (default: bf16 on CPU, per PLATFORM.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the generate baseline (default: torch's, as the worker has today)")
    parser.add_argument("--smoke", action="store_true", help="1 sample, 2 candidates, 4 tokens: checks it runs")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--against", metavar="GIT_REF", help="compare with this version's own generate_batch")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args)
    if args.smoke:
        args.samples, args.candidates, args.max_new_tokens, args.rounds = 1, 2, 4, 1
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up even when piped

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from annotation.prompts import build_extraction_messages
    from training.ml.generate import DecodingSettings, generate_batch
    from training.ml.models import get_model

    cache_root = Path(os.environ.get("COMPX_MODEL_CACHE", REPO / "var" / "models"))
    t0 = time.perf_counter()
    model, tokenizer = get_model("default", cache_root, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    conversations = [build_extraction_messages(docs) for docs in demo_samples(args.samples)]
    settings = DecodingSettings(temperature=args.temperature, top_p=0.95, repetition_penalty=1.15,
                                max_new_tokens=args.max_new_tokens, num_candidates=args.candidates, seed=args.seed,
                                format_guide=True)
    device = next(model.parameters()).device
    print(f"model: SmolLM2-135M-Instruct on {device} ({model.dtype}), loaded in {load_s:.1f}s; "
          f"{os.cpu_count()} cores, torch default threads {torch.get_num_threads()}")
    print(f"{len(conversations)} demo samples x {args.candidates} candidates, guided, temperature "
          f"{args.temperature}, max_new_tokens {args.max_new_tokens}, {args.batch_size} samples per call, "
          f"{args.rounds} round(s)")

    # Warm-up (the guide's vocabulary, first-call costs) so that neither engine pays them.
    for engine in ENGINES:
        generate_batch(model, tokenizer, conversations[:1], DecodingSettings(
            temperature=0, num_candidates=1, max_new_tokens=4, format_guide=True, engine=engine))

    # With --against, that version's code stands where the generate engine would (a child process each).
    trees = {"generate": unpack(args.against), "loop": REPO} if args.against else {}
    labels = {"generate": args.against[:10], "loop": "this"} if args.against else {e: e for e in ENGINES}

    def measure(engine: str) -> tuple[dict, list[str]]:
        if trees:
            return run_child(trees[engine], args)
        return run_engine(engine, model, tokenizer, conversations, settings, args.batch_size)

    totals: dict[str, dict] = {engine: {} for engine in ENGINES}
    loads = [os.getloadavg()[0]]
    same_texts = True
    for round_index in range(args.rounds):
        texts = {}
        for engine in ENGINES if round_index % 2 == 0 else ENGINES[::-1]:
            run, texts[engine] = measure(engine)
            add(totals[engine], run)
            loads.append(os.getloadavg()[0])
            print(f"round {round_index + 1} " + describe(labels[engine], run) + f" (load {loads[-1]:.1f})")
        same_texts = same_texts and texts["generate"] == texts["loop"]

    if trees:
        shutil.rmtree(trees["generate"].parent, ignore_errors=True)
    print("total:")
    for engine in ENGINES:
        print("  " + describe(labels[engine], totals[engine]))
    base, fast = totals["generate"], totals["loop"]
    wall_ratio = (fast["tokens"] / fast["wall"]) / (base["tokens"] / base["wall"])
    cpu_ratio = (fast["tokens"] / fast["cpu"]) / (base["tokens"] / base["cpu"])
    verdict = f"goal >= {GOAL:g}x {'met' if wall_ratio >= GOAL else 'NOT met'}"
    print(f"{labels['loop']} / {labels['generate']}: {wall_ratio:.1f}x tokens/s ({verdict}), {cpu_ratio:.1f}x tokens per CPU-second; "
          f"load average {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores"
          + ("; the same texts from both engines" if same_texts else ""))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": str(device), "dtype": str(model.dtype), "samples": len(conversations),
            "candidates": args.candidates, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
            "rounds": args.rounds, "engines": totals, "speedup": wall_ratio, "speedup_cpu": cpu_ratio,
            "load_average": loads,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
