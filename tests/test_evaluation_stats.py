"""Evaluation statistics on known counts: outcomes from verdicts, win rates with Wilson intervals."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from training.evaluation import (
    INCONSISTENT, INVALID, LOSS, TIE, WIN, expert_outcome, forfeit_outcome, headline, judged_outcome, summarise,
    valid_rate,
)


def test_a_judge_verdict_is_read_from_the_candidates_side():
    assert judged_outcome("a", candidate_is_a=True) == WIN
    assert judged_outcome("a", candidate_is_a=False) == LOSS
    assert judged_outcome("b", candidate_is_a=False) == WIN
    assert judged_outcome("tie", True) == TIE
    assert judged_outcome("inconsistent", True) == INCONSISTENT  # flipped with the order: never a win
    assert judged_outcome("invalid", True) == INVALID


def test_an_invalid_profile_forfeits_its_pair():
    assert forfeit_outcome(True, True) is None  # both valid: the judge decides
    assert forfeit_outcome(True, False) == WIN
    assert forfeit_outcome(False, True) == LOSS
    assert forfeit_outcome(False, False) == TIE


def test_experts_decide_by_strict_majority():
    assert expert_outcome(["a"], candidate_is_a=True) == WIN
    assert expert_outcome(["a", "a", "b"], candidate_is_a=False) == LOSS
    assert expert_outcome(["a", "b"], True) == TIE  # split
    assert expert_outcome(["both_bad", "both_bad", "a"], True) == TIE
    assert expert_outcome(["tie"], True) == TIE
    assert expert_outcome([], True) is None


def test_win_rate_counts_ties_half_with_a_wilson_interval():
    # 40 pairs: 24 wins, 6 ties (2 of them order flips), 10 losses; 3 invalid verdicts are left out.
    outcomes = [WIN] * 24 + [TIE] * 4 + [INCONSISTENT] * 2 + [LOSS] * 10 + [INVALID] * 3
    result = summarise(outcomes)
    assert (result["wins"], result["ties"], result["losses"], result["n"]) == (24, 6, 10, 40)
    assert result["inconsistent"] == 2 and result["invalid"] == 3
    assert result["win_rate"] == pytest.approx(27 / 40)
    # The Wilson score interval, by hand: p̂ = 0.675, n = 40, z = 1.96.
    p, n, z = 27 / 40, 40, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert result["ci"] == [pytest.approx(centre - half, abs=1e-4), pytest.approx(centre + half, abs=1e-4)]
    assert result["ci"] == [pytest.approx(0.5201, abs=1e-4), pytest.approx(0.7993, abs=1e-4)]


def test_whole_counts_agree_with_scipys_wilson_interval():
    result = summarise([WIN] * 40 + [LOSS] * 10)  # the thesis' headline: 80% of n = 50
    ci = binomtest(40, 50).proportion_ci(method="wilson")
    assert result["win_rate"] == 0.8
    assert result["ci"] == [pytest.approx(ci.low, abs=1e-4), pytest.approx(ci.high, abs=1e-4)]
    assert result["ci"][0] > 0.66  # 80% of 50 is clearly better than a coin, if the judge is right


def test_nothing_to_count_is_undefined_not_zero():
    result = summarise([INVALID, INVALID])
    assert result["n"] == 0 and result["win_rate"] is None and result["ci"] == [None, None]
    assert valid_rate(0, 0)["rate"] is None


def test_extremes_stay_inside_zero_and_one():
    assert summarise([WIN] * 5)["ci"][1] == 1.0 and summarise([WIN] * 5)["ci"][0] > 0.5
    assert summarise([LOSS] * 5)["ci"][0] == 0.0


def test_valid_profile_rate_has_an_interval():
    result = valid_rate(7, 20)
    assert result["rate"] == 0.35 and result["valid"] == 7 and result["total"] == 20
    ci = binomtest(7, 20).proportion_ci(method="wilson")
    assert result["ci"] == [pytest.approx(ci.low, abs=1e-4), pytest.approx(ci.high, abs=1e-4)]


def test_unknown_outcomes_are_refused():
    with pytest.raises(ValueError, match="unknown outcomes"):
        summarise(["victory"])


def test_the_headline_names_rate_interval_and_counts():
    results = {"versus": {"baseline": {"judged": summarise([WIN] * 3 + [LOSS]),
                                       "with_forfeits": summarise([WIN] * 5 + [LOSS])}}}
    assert headline(results).startswith("judged pairs: win rate 75% [30–95%] over 4 (3/0/1); with forfeits 83%")


def test_the_headline_says_so_when_nothing_was_judged():
    results = {"versus": {"baseline": {"judged": summarise([]), "with_forfeits": summarise([TIE] * 8)}}}
    assert headline(results) == "no judged pairs; with forfeits 50% [22–78%] over 8"
