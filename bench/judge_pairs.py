"""Build bench/data/judge_pairs.jsonl from the generated candidates and the reader's labels.

    .venv/bin/python bench/judge_pairs.py
    .venv/bin/python bench/judge_pairs.py --smoke   # CI: builds in memory, fails unless it equals the file

Reads ``bench/data/judge_candidates.jsonl`` (``bench/judge_candidates.py``) and the hand-written labels
``bench/data/judge_labels.tsv`` (one pair a line: sample, candidate x, candidate y, winner x / y / tie, reason;
a candidate is ``sample/temperature/index``). Writes one labelled pair a line with the sample's document ids,
both profiles' texts and sources, the label and the reason. Which profile is "a" is drawn per pair (seeded), so
a judge that favours one side cannot look good by it. A bad line fails the whole build with its line number.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
CANDIDATES = DATA / "judge_candidates.jsonl"
LABELS = DATA / "judge_labels.tsv"
OUT = DATA / "judge_pairs.jsonl"
SEED = 15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help=f"write nothing; exit 1 unless {OUT.name} is what the candidates and labels give")
    args = parser.parse_args()
    candidates = {}
    for row in map(json.loads, filter(str.strip, CANDIDATES.read_text(encoding="utf-8").splitlines())):
        candidates[f"{row['sample']}/{row['temperature']}/{row['candidate']}"] = row
    rng = random.Random(SEED)
    pairs, seen = [], set()
    for number, line in enumerate(LABELS.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 5:
            return fail(number, f"expected 5 tab-separated fields, got {len(fields)}")
        sample, x, y, winner, reason = (f.strip() for f in fields)
        missing = [ref for ref in (x, y) if ref not in candidates]
        if missing:
            return fail(number, f"no candidate {missing[0]!r} in {CANDIDATES.name}")
        if winner not in ("x", "y", "tie"):
            return fail(number, f"winner must be x, y or tie (got {winner!r})")
        if candidates[x]["sample"] != sample:
            return fail(number, f"x must be a candidate of the sample {sample!r} itself")
        if (sample, x, y) in seen or (sample, y, x) in seen or x == y:
            return fail(number, "pair labelled twice (or a profile against itself)")
        seen.add((sample, x, y))
        if not reason:
            return fail(number, "a label needs its reason")
        swap = rng.random() < 0.5
        first, second = (y, x) if swap else (x, y)
        label = "tie" if winner == "tie" else ("a" if (winner == "x") != swap else "b")
        same = candidates[y]["sample"] == sample
        pairs.append({
            "id": f"p{len(pairs) + 1:03d}", "kind": "same-sample" if same else "other-researcher", "sample": sample,
            "documents": candidates[x]["documents"],
            "a": {"text": candidates[first]["text"], "source": source(candidates[first], first)},
            "b": {"text": candidates[second]["text"], "source": source(candidates[second], second)},
            "label": label, "reason": reason,
        })
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    if args.smoke:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is not what {CANDIDATES.name} and {LABELS.name} give: run bench/judge_pairs.py", file=sys.stderr)
            return 1
        print(f"{OUT.name}: {len(pairs)} pairs, as the candidates and labels give")
        return 0
    OUT.write_text(text, encoding="utf-8")
    same = sum(p["kind"] == "same-sample" for p in pairs)
    print(f"{len(pairs)} pairs ({same} same-sample, {len(pairs) - same} with another researcher's profile) -> {OUT}")
    return 0


def source(candidate: dict, ref: str) -> dict:
    return {"ref": ref, "sample": candidate["sample"], "temperature": candidate["temperature"],
            "candidate": candidate["candidate"], "valid": candidate["valid"],
            "invalid_reason": candidate["invalid_reason"]}


def fail(number: int, why: str) -> int:
    print(f"{LABELS}:{number}: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
