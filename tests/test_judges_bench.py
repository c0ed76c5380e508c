"""bench/judges.py's figures and the labelled pair set it reads (no model: the numbers are checked by hand)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_judges", REPO / "bench" / "judges.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_labelled_set_is_complete_and_never_uses_a_profiles_own_sample_as_baseline(bench):
    pairs, abstracts = bench.load_pairs(bench.PAIRS, None)
    assert len(pairs) >= 80 and {p.label for p in pairs} <= {"a", "b", "tie"}
    assert sum(p.kind == "same-sample" for p in pairs) > len(pairs) / 2 > sum(p.kind == "other-researcher" for p in pairs)
    rows = [json.loads(line) for line in bench.PAIRS.read_text(encoding="utf-8").splitlines()]
    for pair, row in zip(pairs, rows):
        assert row["reason"] and pair.a != pair.b and abstracts[pair.sample]
        writers = {row[side]["source"]["sample"] for side in ("a", "b")}
        assert pair.baseline_sample not in writers | {pair.sample}


def test_accuracy_counts_only_pairs_both_decided_and_kappa_counts_ties(bench):
    pairs = [bench.Pair(str(i), "same-sample", "s", "x", "y", label) for i, label in enumerate("aabbt")]
    for p in pairs:
        p.label = {"t": "tie"}.get(p.label, p.label)
    verdicts = [bench.Verdict(v, m) for v, m in [("a", 0.9), ("b", 0.1), ("b", 0.5), ("tie", 0.0), ("a", 0.2)]]
    f = bench.figures(pairs, verdicts)
    assert (f["reader_decided"], f["judge_decided"]) == (4, 3)
    assert f["accuracy"] == pytest.approx(2 / 3)
    low, high = f["interval"]
    assert 0 < low < 2 / 3 < high < 1
    assert f["high_n"] == 1 and f["high_accuracy"] == 1.0  # the top third of 3 decided verdicts: margin 0.9
    assert -1 <= f["kappa"] < 1


def test_two_judges_agreeing_keep_only_shared_verdicts(bench):
    x = [bench.Verdict("a", 0.3), bench.Verdict("b", 0.2), bench.Verdict("a", 0.4)]
    y = [bench.Verdict("a", 0.1), bench.Verdict("a", 0.5), bench.Verdict("tie", 0.0)]
    assert [(v.preferred, v.margin) for v in bench.agreeing(x, y)] == [("a", 0.1), ("tie", 0.2), ("tie", 0.0)]


def test_figures_of_a_judge_that_never_decides_are_undefined_not_zero(bench):
    pairs = [bench.Pair("1", "same-sample", "s", "x", "y", "a")]
    f = bench.figures(pairs, [bench.Verdict("tie", 0.0)])
    assert f["judge_decided"] == 0 and math.isnan(f["accuracy"])


@pytest.mark.model
def test_the_smoke_run_scores_through_the_product_and_agrees_with_the_bench():
    """What CI runs: 4 pairs, SmolLM2's scorer, the product's scoring judge beside it, the A/B judge on one."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "judges.py"), "--smoke", "--threads", "1"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "scoring judge smollm2 (product path): the same decision as the bench's scorer on 4/4 pairs" in done.stdout
    assert "scoring judge smollm2 (product)" in done.stdout and "A/B judge smollm2 (both orders)" in done.stdout
