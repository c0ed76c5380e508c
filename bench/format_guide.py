"""Format guide: valid-profile rate and speed of the offline model with and without the guide, in one run.

    .venv/bin/python bench/format_guide.py                  # 4 demo samples x 4 candidates, 256 tokens
    .venv/bin/python bench/format_guide.py --samples 9 --temperature 0.7
    .venv/bin/python bench/format_guide.py --smoke          # CI: 1 sample x 1 candidate, 16 tokens

Builds the real extraction prompt (``annotation.prompts``, the version new work uses) for the first
``--samples`` researchers of the bundled demo abstracts (four abstracts each), generates the same candidates
with the same seed through ``generate_batch`` twice — unguided, then with ``format_guide`` — and parses every
candidate with the product's strict parser. Prints, for each: valid profiles / candidates, the most common
reasons for rejection, completion tokens per second of wall time and per CPU-second; then the ratios
(valid rate guided / unguided, CPU cost per token guided / unguided: the guide's own overhead).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO = REPO / "annotation" / "demo_data" / "abstracts.jsonl"


def demo_samples(n: int, per_sample: int = 4) -> list[list[tuple[str, str]]]:
    """The demo's grouping: one sample per first author, in file order."""
    by_author: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for line in DEMO.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        authors = row["authors"] if isinstance(row["authors"], list) else row["authors"].split(";")
        by_author[authors[0].strip()].append((row["title"], row["abstract"]))
    return [docs[:per_sample] for docs in by_author.values()][:n]


def run(label, model, tokenizer, conversations, settings, batch_size):
    from annotation.profiles.format import parse_profile
    from training.ml.generate import generate_batch

    start, cpu_start = time.perf_counter(), time.process_time()
    results = generate_batch(model, tokenizer, conversations, settings, batch_size=batch_size)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    candidates = [c for cands in results for c in cands]
    parsed = [parse_profile(c.text) for c in candidates]
    tokens = sum(c.completion_tokens for c in candidates)
    valid = sum(p.valid for p in parsed)
    reasons = collections.Counter(p.reason.split(" (")[0][:60] for p in parsed if not p.valid)
    print(f"{label:9} valid {valid}/{len(parsed)} ({100 * valid / len(parsed):.0f}%), {tokens} tokens in "
          f"{wall:.0f}s = {tokens / wall:.1f} tok/s, {tokens / cpu:.1f} tok/CPU-s", flush=True)
    for reason, count in reasons.most_common(4):
        print(f"          {count} × {reason}")
    example = next((c.text for c, p in zip(candidates, parsed) if p.valid), None)
    return {"valid": valid, "n": len(parsed), "tokens": tokens, "wall": wall, "cpu": cpu, "example": example}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.5, help="the demo generator's (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per generate call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="CI size: --samples 1 --candidates 1 --max-new-tokens 16")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.candidates, args.max_new_tokens = 1, 1, 16

    from annotation.prompts import build_extraction_messages
    from training.ml.generate import DecodingSettings
    from training.ml.models import get_model

    model, tokenizer = get_model("default", Path(os.environ.get("COMPX_MODEL_CACHE", REPO / "var" / "models")))
    conversations = [build_extraction_messages(docs) for docs in demo_samples(args.samples, 1 if args.smoke else 4)]
    common = dict(temperature=args.temperature, top_p=0.95, repetition_penalty=1.15, seed=args.seed,
                  max_new_tokens=args.max_new_tokens, num_candidates=args.candidates)
    print(f"{len(conversations)} demo samples x {args.candidates} candidates, temperature {args.temperature}, "
          f"max_new_tokens {args.max_new_tokens}, load average {os.getloadavg()[0]:.1f}")
    plain = run("unguided", model, tokenizer, conversations, DecodingSettings(**common), args.batch_size)
    guided = run("guided", model, tokenizer, conversations, DecodingSettings(**common, format_guide=True),
                 args.batch_size)
    rate = lambda r: r["valid"] / r["n"]  # noqa: E731
    ratio = f"{rate(guided) / rate(plain):.1f}x" if plain["valid"] else f"{rate(guided):.0%} vs 0%"
    cost = (guided["cpu"] / guided["tokens"]) / (plain["cpu"] / plain["tokens"])
    print(f"valid rate guided / unguided: {ratio}; CPU per token guided / unguided: {cost:.2f} "
          f"(load average now {os.getloadavg()[0]:.1f})")
    if guided["example"]:
        print("a valid guided candidate:\n" + guided["example"])
    if not plain["tokens"] or not guided["tokens"]:
        print("FAILED: a run generated no tokens")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
