"""Every judge against the labelled pair set: accuracy (Wilson 95%), Cohen's κ, high-margin verdicts.

    .venv/bin/python bench/judges.py                 # all pairs of bench/data/judge_pairs.jsonl
    .venv/bin/python bench/judges.py --smoke         # CI (tests/test_judges_bench.py): 4 pairs, SmolLM2 only
    .venv/bin/python bench/judges.py --dtypes bf16,fp32 --ab-pairs 40

Judges: the local A/B judge (SmolLM2 read at the verdict token, both orders, an order flip is no
preference), the PMI scorer (``training.ml.scoring``) on SmolLM2 and on Gemma 3 270M, the two scorers
agreeing (a verdict only where both name the same profile), and the product's scoring judge
(``annotation.judging.backends.ScoringJudgeBackend``, what a judging job runs) with its default settings,
whose decisions must equal the bench's own scorer's. Each scorer reads every profile once per
context — its own sample's abstracts, another sample's abstracts ("other"), no abstracts ("none") — and
every variant below is computed from those token log-probabilities: baseline other / none / no baseline
at all (plain likelihood), whole profile / competency lines only.

Figures, on the pairs a careful reader labelled (``bench/data/README.md``):
- accuracy: of the pairs both the reader and the judge decided (a or b), the share they agree on, with
  its Wilson 95% interval and n; ``decided``: the share of the reader's decided pairs the judge decided;
- κ: Cohen's κ over all labelled pairs, ties included (a / b / tie);
- high margin: accuracy of the verdicts whose margin is in the judge's top third (n given);
- all of it overall and on same-sample pairs only.

"Other" abstracts: sample i's baseline is sample i+1's (file order, wrapping round); pairs with another
researcher's profile never take it from that sample. Prints the tables and a margin sweep of the chosen
variant, and how long scoring took per profile on each model.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "compx_site.settings")

PAIRS = REPO / "bench" / "data" / "judge_pairs.jsonl"
DEMO = REPO / "annotation" / "demo_data" / "abstracts.jsonl"
MODELS = {"smollm2": "default", "gemma": "gemma"}
VARIANTS = [("other", "whole"), ("none", "whole"), ("plain", "whole"), ("other", "competencies"),
            ("none", "competencies")]
MARGINS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass
class Pair:
    id: str
    kind: str  # "same-sample" | "other-researcher"
    sample: str
    a: str
    b: str
    label: str  # "a" | "b" | "tie"
    baseline_sample: str = ""


@dataclass
class Verdict:
    preferred: str  # "a" | "b" | "tie"
    margin: float  # how sure: |score difference| (scorers) or |p − ½| (A/B judge)


@dataclass
class Timing:
    seconds: float = 0.0
    profiles: int = 0
    passes: int = 0
    prompts: int = 0
    extra: dict = field(default_factory=dict)


def load_pairs(path: Path, limit: int | None) -> tuple[list[Pair], dict[str, list[tuple[str, str]]]]:
    documents = {}
    for line in DEMO.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        documents[row["id"]] = (row["title"], row["abstract"])
    pairs, abstracts = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = Pair(row["id"], row["kind"], row["sample"], row["a"]["text"], row["b"]["text"], row["label"])
            abstracts[pair.sample] = [documents[d] for d in row["documents"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{number}: not a labelled pair ({type(exc).__name__}: {exc})") from exc
        if pair.label not in ("a", "b", "tie"):
            raise SystemExit(f"{path}:{number}: label must be a, b or tie (got {pair.label!r})")
        pairs.append(pair)
    if limit:
        pairs = pairs[:limit]
    samples = list(abstracts)
    foreign = collections.defaultdict(set)
    for row in map(json.loads, filter(str.strip, path.read_text(encoding="utf-8").splitlines())):
        for side in ("a", "b"):
            if row[side]["source"]["sample"] != row["sample"]:
                foreign[row["sample"]].add(row[side]["source"]["sample"])
    for pair in pairs:
        i = samples.index(pair.sample)
        # The next sample in file order whose researcher wrote neither profile.
        pair.baseline_sample = next(s for k in range(1, len(samples)) if
                                    (s := samples[(i + k) % len(samples)]) not in foreign[pair.sample])
    return pairs, abstracts


# --- judges --------------------------------------------------------------------------------------------


def token_scores(name: str, dtype: str, pairs: list[Pair], abstracts, batch_logits: int | None = None):
    """{(sample, text): {"own"|"other"|"none": token log-probs}} and the targets' scored_from per part."""
    from training.ml.models import load_model
    from training.ml.scoring import Scorer, ScorerSettings, profile_target

    model, tokenizer = load_model(MODELS[name], cache_root(), device=None, dtype=dtype)
    scorer = Scorer(model, tokenizer, ScorerSettings(**({"batch_logits": batch_logits} if batch_logits else {})),
                    keep_contexts=32)
    texts = collections.defaultdict(list)  # sample -> unique texts, first seen first
    for pair in pairs:
        for text in (pair.a, pair.b):
            if text not in texts[pair.sample]:
                texts[pair.sample].append(text)
    baseline_of = {p.sample: p.baseline_sample for p in pairs}
    scores, starts, timing = {}, {}, Timing()
    started = time.perf_counter()
    for sample, sample_texts in texts.items():
        targets = scorer.targets(sample_texts)
        contexts = {"own": abstracts[sample], "other": abstracts[baseline_of[sample]], "none": ()}
        runs = {key: scorer.token_logprobs(ctx, targets) for key, ctx in contexts.items()}
        for k, text in enumerate(sample_texts):
            scores[(sample, text)] = {key: run[k] for key, run in runs.items()}
            starts[(sample, text)] = {part: profile_target(tokenizer, text, part, 512).scored_from
                                      for part in ("whole", "competencies")}
        timing.profiles += len(sample_texts)
        timing.passes += 3 * len(sample_texts)
        print(f"  {name} {dtype}: {sample} ({len(sample_texts)} profiles) scored", flush=True)
    timing.seconds = time.perf_counter() - started
    timing.prompts = scorer.encodings
    del model
    return scores, starts, timing


def scorer_verdicts(pairs, scores, starts, baseline: str, part: str, margin: float) -> list[Verdict]:
    def value(sample: str, text: str) -> float | None:
        lp, start = scores[(sample, text)], starts[(sample, text)][part]
        if start >= len(lp["own"]):
            return None
        own = float(lp["own"][start:].mean())
        return own if baseline == "plain" else own - float(lp[baseline][start:].mean())

    verdicts = []
    for pair in pairs:
        a, b = value(pair.sample, pair.a), value(pair.sample, pair.b)
        if a is None or b is None:
            verdicts.append(Verdict("tie" if a is None and b is None else ("b" if a is None else "a"), 0.0))
            continue
        difference = a - b
        preferred = "a" if difference > margin else "b" if difference < -margin else "tie"
        verdicts.append(Verdict(preferred, abs(difference)))
    return verdicts


def ab_verdicts(pairs: list[Pair], abstracts, dtype: str) -> tuple[list[Verdict], Timing]:
    import django

    django.setup()
    from annotation.judging.backends import answer_probabilities, local_outcome
    from annotation.prompts import build_judge_messages
    from annotation.judging.verdicts import combine_canonical, to_canonical
    from training.ml.models import load_model

    model, tokenizer = load_model("default", cache_root(), dtype=dtype)
    verdicts, started = [], time.perf_counter()
    for pair in pairs:
        docs = abstracts[pair.sample]
        prompts = [build_judge_messages(docs, pair.a, pair.b), build_judge_messages(docs, pair.b, pair.a)]
        outcomes = [local_outcome(p_a, p_b, p_tie) for p_a, p_b, p_tie, _ in
                    answer_probabilities(model, tokenizer, prompts)]
        labels = [to_canonical(o.verdict.preferred, order) if o.verdict.valid else None
                  for o, order in zip(outcomes, ("ab", "ba"))]
        combined = combine_canonical(*labels)
        preferred = combined if combined in ("a", "b", "tie") else "tie"  # a flip or no answer: no preference
        confidences = [o.p_first if order == "ab" else 1 - o.p_first
                       for o, order in zip(outcomes, ("ab", "ba")) if o.p_first is not None]
        margin = abs(statistics.mean(confidences) - 0.5) if confidences else 0.0
        verdicts.append(Verdict(preferred, margin if preferred != "tie" else 0.0))
    return verdicts, Timing(time.perf_counter() - started, passes=2 * len(pairs))


def product_verdicts(name: str, pairs: list[Pair], abstracts, margin: float) -> tuple[list[Verdict], Timing]:
    """The scoring judge as a judging job runs it: ScoringJudgeBackend on requests like the session's (the
    pair's sample's abstracts, its baseline sample's), each (sample, text) one profile scored once."""
    import django

    django.setup()
    from annotation.judging.backends import ScoringJudgeBackend, ScoringRequest
    from annotation.models import Judge, JudgeBackend

    judge = Judge(name=f"bench {name}", backend=JudgeBackend.SCORING, model=MODELS[name], score_margin=margin)
    judge.clean()
    backend = ScoringJudgeBackend(judge)
    samples, ids = list(abstracts), {}
    requests = []
    for pair in pairs:
        a, b = (ids.setdefault((pair.sample, text), len(ids)) for text in (pair.a, pair.b))
        requests.append(ScoringRequest(samples.index(pair.sample), (a, pair.a), (b, pair.b), abstracts[pair.sample],
                                       [abstracts[pair.baseline_sample]] if judge.score_baseline == "other" else []))
    started = time.perf_counter()
    verdicts: list[Verdict | None] = [None] * len(pairs)
    for index, outcome in backend.run(requests):
        raw = json.loads(outcome.text)
        difference = raw["difference"]
        verdicts[index] = Verdict({"A": "a", "B": "b"}.get(outcome.verdict.preferred, "tie"),
                                  abs(difference) if difference is not None else 0.0)
    return verdicts, Timing(time.perf_counter() - started, profiles=len(ids), passes=2 * len(ids),
                            prompts=backend.scorer.encodings)


def agreeing(x: list[Verdict], y: list[Verdict]) -> list[Verdict]:
    # Margins of different models are not on one scale: the weaker one's rank stands for both.
    return [Verdict(a.preferred if a.preferred == b.preferred else "tie", min(a.margin, b.margin))
            for a, b in zip(x, y)]


# --- figures -------------------------------------------------------------------------------------------


def figures(pairs: list[Pair], verdicts: list[Verdict]) -> dict:
    from annotation import stats

    labels, said = [p.label for p in pairs], [v.preferred for v in verdicts]
    decided = [(p.label, v) for p, v in zip(pairs, verdicts) if p.label != "tie"]
    both = [(label, v) for label, v in decided if v.preferred != "tie"]
    right = sum(label == v.preferred for label, v in both)
    margins = sorted((v.margin for _, v in both), reverse=True)
    cut = margins[max(0, math.ceil(len(margins) / 3) - 1)] if margins else math.inf
    high = [(label, v) for label, v in both if v.margin >= cut]
    high_right = sum(label == v.preferred for label, v in high)
    return {
        "n": len(pairs), "reader_decided": len(decided), "judge_decided": len(both),
        "accuracy": right / len(both) if both else math.nan,
        "interval": stats.wilson_interval(right, len(both)) if both else (math.nan, math.nan),
        "kappa": stats.cohen_kappa(labels, said, labels=["a", "b", "tie"]),
        "high_n": len(high), "high_accuracy": high_right / len(high) if high else math.nan,
        "high_interval": stats.wilson_interval(high_right, len(high)) if high else (math.nan, math.nan),
        "high_cut": cut,
    }


def row(name: str, f: dict) -> str:
    low, high = f["interval"]
    high_low, high_high = f["high_interval"]
    share = f["judge_decided"] / f["reader_decided"] if f["reader_decided"] else math.nan
    return (f"{name:34} {pct(f['accuracy']):>5} [{pct(low)}–{pct(high)}] {f['judge_decided']:>3}/{f['reader_decided']:<3}"
            f" ({pct(share):>4} decided)  κ {f['kappa']:+.2f}   high {pct(f['high_accuracy']):>4} "
            f"[{pct(high_low)}–{pct(high_high)}] (n={f['high_n']})")


def pct(x: float) -> str:
    return "  –" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def table(title: str, pairs: list[Pair], judged: dict[str, list[Verdict]]) -> None:
    print(f"\n{title}  (n = {len(pairs)} pairs)")
    print(f"{'judge':34} accuracy [Wilson 95%] judge/reader decided         κ       high-margin third [Wilson 95%]")
    for name, verdicts in judged.items():
        print(row(name, figures(pairs, verdicts)))


def cache_root() -> Path:
    return Path(os.environ.get("COMPX_MODEL_CACHE", REPO / "var" / "models"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, help="only the first N pairs (smoke size: 6)")
    parser.add_argument("--file", type=Path, default=PAIRS)
    parser.add_argument("--models", default="smollm2,gemma", help="scorer models: smollm2, gemma")
    parser.add_argument("--dtypes", default="bf16", help="bf16, fp32 or both (bf16,fp32): the first is reported")
    parser.add_argument("--margin", type=float, default=None, help="tie margin of the scorers (default: ScorerSettings')")
    parser.add_argument("--ab-pairs", type=int, default=None, help="judge only the first N pairs with the A/B judge "
                        "(it reads ~2k tokens twice per pair); 0 skips it")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (1 is faster on a shared CPU)")
    parser.add_argument("--product", default="smollm2", help="models to run through the product's scoring judge "
                        "as well (its decisions must equal the bench's); empty skips it")
    parser.add_argument("--smoke", action="store_true", help="CI size: --pairs 4 --models smollm2 --ab-pairs 1")
    args = parser.parse_args()
    if args.smoke:
        args.pairs, args.ab_pairs = args.pairs or 4, 1 if args.ab_pairs is None else args.ab_pairs
        if args.models == parser.get_default("models"):
            args.models = "smollm2"

    import torch

    from training.ml.scoring import ScorerSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    margin = ScorerSettings().margin if args.margin is None else args.margin
    default_baseline, default_part = ScorerSettings().baseline, ScorerSettings().part
    pairs, abstracts = load_pairs(args.file, args.pairs)
    kinds = collections.Counter(p.kind for p in pairs)
    print(f"{len(pairs)} labelled pairs ({', '.join(f'{n} {k}' for k, n in kinds.items())}), reader: "
          f"{dict(collections.Counter(p.label for p in pairs))}; scorer margin {margin}")

    judged: dict[str, list[Verdict]] = {}
    timings: dict[str, Timing] = {}
    main_verdicts: dict[str, list[Verdict]] = {}
    dtypes = args.dtypes.split(",")
    all_scores = {}
    for name in filter(None, args.models.split(",")):
        for dtype in dtypes:
            scores, starts, timing = token_scores(name, dtype, pairs, abstracts)
            all_scores[(name, dtype)] = (scores, starts)
            timings[f"{name} {dtype}"] = timing
        scores, starts = all_scores[(name, dtypes[0])]
        for baseline, part in VARIANTS:
            verdicts = scorer_verdicts(pairs, scores, starts, baseline, part, margin)
            label = f"PMI {name} {baseline}/{part}" if baseline != "plain" else f"likelihood {name} {part}"
            judged[label] = verdicts
            if (baseline, part) == (default_baseline, default_part):
                main_verdicts[name] = verdicts
    if "smollm2" in main_verdicts and "gemma" in main_verdicts:
        judged["PMI smollm2 + gemma agreeing"] = agreeing(main_verdicts["smollm2"], main_verdicts["gemma"])
    mismatched = 0
    for name in filter(None, args.product.split(",")):
        verdicts, timing = product_verdicts(name, pairs, abstracts, margin)
        timings[f"scoring judge {name}"] = timing
        judged[f"scoring judge {name} (product)"] = verdicts
        if name in main_verdicts:
            same = sum(x.preferred == y.preferred for x, y in zip(verdicts, main_verdicts[name]))
            mismatched += same != len(pairs)
            print(f"scoring judge {name} (product path): the same decision as the bench's scorer on {same}/{len(pairs)}"
                  f" pairs")
    ab_n = len(pairs) if args.ab_pairs is None else min(args.ab_pairs, len(pairs))
    if ab_n:
        verdicts, timing = ab_verdicts(pairs[:ab_n], abstracts, dtypes[0])
        timings["A/B judge smollm2"] = timing
        if ab_n == len(pairs):
            judged = {"A/B judge smollm2 (both orders)": verdicts, **judged}

    same = [i for i, p in enumerate(pairs) if p.kind == "same-sample"]
    table("All pairs", pairs, judged)
    table("Same-sample pairs", [pairs[i] for i in same], {k: [v[i] for i in same] for k, v in judged.items()})
    if 0 < ab_n < len(pairs):
        ab_pairs = pairs[:ab_n]
        ab_same = [i for i, p in enumerate(ab_pairs) if p.kind == "same-sample"]
        subset = {"A/B judge smollm2 (both orders)": verdicts}
        for name in main_verdicts:
            subset[f"PMI {name} {default_baseline}/{default_part}"] = main_verdicts[name][:ab_n]
        table(f"A/B judge beside the scorers, first {ab_n} pairs", ab_pairs, subset)
        table("  same-sample of those", [ab_pairs[i] for i in ab_same],
              {k: [v[i] for i in ab_same] for k, v in subset.items()})

    for name in main_verdicts:
        scores, starts = all_scores[(name, dtypes[0])]
        print(f"\nMargin sweep, PMI {name} {default_baseline}/{default_part} (all pairs | same-sample)")
        for m in MARGINS:
            v = scorer_verdicts(pairs, scores, starts, default_baseline, default_part, m)
            f_all, f_same = figures(pairs, v), figures([pairs[i] for i in same], [v[i] for i in same])
            print(f"  margin {m:<5} acc {pct(f_all['accuracy']):>4} decided {f_all['judge_decided']:>3}/"
                  f"{f_all['reader_decided']:<3} κ {f_all['kappa']:+.2f} | acc {pct(f_same['accuracy']):>4} decided "
                  f"{f_same['judge_decided']:>3}/{f_same['reader_decided']:<3} κ {f_same['kappa']:+.2f}")
        if len(dtypes) > 1:
            other, _ = all_scores[(name, dtypes[1])]
            s2 = scorer_verdicts(pairs, other, starts, default_baseline, default_part, margin)
            v1 = scorer_verdicts(pairs, scores, starts, default_baseline, default_part, margin)
            same_decisions = sum(x.preferred == y.preferred for x, y in zip(v1, s2))
            print(f"  {dtypes[0]} vs {dtypes[1]}: same decision on {same_decisions}/{len(pairs)} pairs; time "
                  f"{dtypes[1]}/{dtypes[0]} = {timings[f'{name} {dtypes[1]}'].seconds / timings[f'{name} {dtypes[0]}'].seconds:.2f}")

    print("\nTime (one run, shared CPU: compare within the run)")
    for name, t in timings.items():
        if t.profiles:
            print(f"  {name:20} {t.seconds:6.0f}s for {t.profiles} profiles in {t.passes // t.profiles} contexts ({t.prompts} prompts "
                  f"encoded): {t.seconds / t.profiles:.1f}s per profile, {2 * t.seconds / t.passes:.1f}s per "
                  f"profile with one baseline")
        else:
            print(f"  {name:20} {t.seconds:6.0f}s for {t.passes // 2} pairs: {2 * t.seconds / t.passes:.1f}s per pair")
    if mismatched:
        print("the product's scoring judge decided differently from the bench's scorer: see above")
    return 1 if mismatched else 0


if __name__ == "__main__":
    raise SystemExit(main())
