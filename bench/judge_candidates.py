"""Candidates for the labelled judge pairs: the offline SmolLM2 on the demo abstracts, as CompX generates.

    .venv/bin/python bench/judge_candidates.py                       # 9 samples x 3 temperatures x 4
    .venv/bin/python bench/judge_candidates.py --temperatures 0.5 --candidates 2
    .venv/bin/python bench/judge_candidates.py --smoke   # CI: 1 sample x 1 candidate, 16 tokens, into a temp file

Each demo researcher is one sample, grouped as ``seed_demo`` imports them (first author, up to five
abstracts, file order). The prompt is the product's extraction prompt (``annotation.prompts``) and the
decoding is the demo generator's (format guide on, top-p 0.95, repetition penalty 1.15, 256 new tokens),
at several temperatures for variety. Every candidate is appended to ``bench/data/judge_candidates.jsonl``
as soon as its batch is done, with the strict parser's verdict, so a stopped run loses at most one batch
and a re-run generates only the (sample, temperature) batches that are missing.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO = REPO / "annotation" / "demo_data" / "abstracts.jsonl"
OUT = REPO / "bench" / "data" / "judge_candidates.jsonl"
SAMPLE_SIZE = 5  # seed_demo's --sample-size


def demo_samples() -> dict[str, list[dict]]:
    """First author → that author's abstracts (id, title, abstract), at most SAMPLE_SIZE, in file order."""
    by_author: dict[str, list[dict]] = collections.defaultdict(list)
    for line in DEMO.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        docs = by_author[row["authors"][0].strip()]
        if len(docs) < SAMPLE_SIZE:
            docs.append({"id": row["id"], "title": row["title"], "abstract": row["abstract"]})
    return dict(by_author)


def done_batches(path: Path) -> set[tuple[str, float]]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(r["sample"], r["temperature"]) for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperatures", default="0.5,0.8,1.0")
    parser.add_argument("--candidates", type=int, default=4, help="per sample and temperature")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--samples", default="", help="only these samples (comma-separated first authors)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is much faster on a CPU shared with others")
    parser.add_argument("--smoke", action="store_true",
                        help="CI size: the first sample, 1 candidate at T=0.5, 16 tokens, into a temporary file")
    args = parser.parse_args()
    if args.smoke:
        args.temperatures, args.candidates, args.max_new_tokens = "0.5", 1, 16
        args.out = Path(tempfile.mkdtemp(prefix="compx-smoke-")) / "candidates.jsonl"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from annotation.profiles.format import parse_profile
    from annotation.prompts import build_extraction_messages
    from training.ml.generate import DecodingSettings, generate_batch
    from training.ml.models import get_model

    model, tokenizer = get_model("default", Path(os.environ.get("COMPX_MODEL_CACHE", REPO / "var" / "models")))
    samples = demo_samples()
    if args.samples:
        wanted = [name.strip() for name in args.samples.split(",")]
        unknown = sorted(set(wanted) - set(samples))
        if unknown:
            parser.error(f"--samples: no demo sample {', '.join(unknown)} (known: {', '.join(samples)})")
        samples = {name: samples[name] for name in wanted}
    if args.smoke:
        samples = dict(list(samples.items())[:1])
    done = done_batches(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for t_index, temperature in enumerate(float(t) for t in args.temperatures.split(",")):
        for s_index, (sample, docs) in enumerate(samples.items()):
            if (sample, temperature) in done:
                continue
            settings = DecodingSettings(temperature=temperature, top_p=0.95, repetition_penalty=1.15,
                                        max_new_tokens=args.max_new_tokens, num_candidates=args.candidates,
                                        format_guide=True, seed=args.seed + 100 * t_index + s_index)
            messages = build_extraction_messages([(d["title"], d["abstract"]) for d in docs])
            started = time.perf_counter()
            [candidates] = generate_batch(model, tokenizer, [messages], settings, batch_size=1)
            wall = time.perf_counter() - started
            with open(args.out, "a", encoding="utf-8") as fh:
                for index, c in enumerate(candidates):
                    parsed = parse_profile(c.text)
                    valid = parsed.valid and c.finish_reason == "stop"
                    reason = parsed.reason if parsed.valid is False else ("" if valid else "cut off at the token limit")
                    fh.write(json.dumps({
                        "sample": sample, "documents": [d["id"] for d in docs], "temperature": temperature,
                        "seed": settings.seed, "candidate": index, "text": c.text, "valid": valid,
                        "invalid_reason": reason, "completion_tokens": c.completion_tokens,
                        "finish_reason": c.finish_reason,
                    }, ensure_ascii=False) + "\n")
            tokens = sum(c.completion_tokens for c in candidates)
            valid = sum(parse_profile(c.text).valid and c.finish_reason == "stop" for c in candidates)
            print(f"{sample} T={temperature}: {valid}/{len(candidates)} valid, {tokens} tokens in {wall:.0f}s "
                  f"({tokens / wall:.1f} tok/s)", flush=True)
    if args.smoke:
        written = [json.loads(line) for line in args.out.read_text(encoding="utf-8").splitlines()]
        shutil.rmtree(args.out.parent)
        if len(written) != args.candidates or not all(row["completion_tokens"] for row in written):
            print(f"FAILED: {len(written)} candidates written, {args.candidates} asked")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
