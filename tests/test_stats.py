import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from annotation.stats import (
    Confusion,
    Estimate,
    WinRate,
    bootstrap_ci,
    bootstrap_rankings,
    bradley_terry,
    cohen_kappa,
    collapse,
    confusion,
    elo,
    kendall,
    krippendorff_alpha,
    krippendorff_alpha_ci,
    raw_agreement,
    spearman,
    wilson_interval,
    win_rate,
)

# Ten items, two raters. Both "a": 4, both "b": 3, x=a/y=b: 2, x=b/y=a: 1.
X = ["a"] * 4 + ["b"] * 3 + ["a"] * 2 + ["b"]
Y = ["a"] * 4 + ["b"] * 3 + ["b"] * 2 + ["a"]


def test_raw_agreement_by_hand():
    assert raw_agreement(X, Y) == pytest.approx(7 / 10)
    # Without ties: the tie item goes, the other three stay; 2 of 3 agree.
    assert raw_agreement(["a", "a", "tie", "b"], ["a", "b", "a", "b"], drop={"tie"}) == pytest.approx(2 / 3)
    assert raw_agreement(["a", "tie"], ["a", "a"]) == 0.5


def test_raw_agreement_degenerate():
    assert math.isnan(raw_agreement([], []))
    assert math.isnan(raw_agreement(["tie"], ["a"], drop=["tie"]))
    with pytest.raises(ValueError, match="different lengths"):
        raw_agreement(["a"], [])


@pytest.mark.parametrize(
    ("label", "collapsed"),
    [("a", "a"), ("b", "b"), ("tie", "neither"), ("both_bad", "neither"), ("inconsistent", "neither")],
)
def test_collapse(label, collapsed):
    assert collapse(label) == collapsed


def test_collapse_refuses_unknown_labels():
    with pytest.raises(ValueError):
        collapse("A")


def test_cohen_kappa_by_hand():
    # p_o = 7/10. Marginals: x a=6 b=4, y a=5 b=5 → p_e = .6·.5 + .4·.5 = .5. κ = (.7 − .5)/(1 − .5) = .4
    assert cohen_kappa(X, Y) == pytest.approx(0.4)
    assert cohen_kappa(X, X) == pytest.approx(1.0)
    # Systematic disagreement: p_o = 0, p_e = .5 → κ = −1.
    assert cohen_kappa(["a", "b"] * 3, ["b", "a"] * 3) == pytest.approx(-1.0)


def test_cohen_kappa_degenerate():
    assert math.isnan(cohen_kappa([], []))
    # One label for both raters: chance agreement is 1 and κ = 0/0.
    assert math.isnan(cohen_kappa(["a", "a", "a"], ["a", "a", "a"]))


def test_bootstrap_ci_contains_the_estimate():
    low, high = bootstrap_ci(cohen_kappa, X * 3, Y * 3, n_boot=500)
    assert low < cohen_kappa(X * 3, Y * 3) < high
    assert -1 <= low < high <= 1


def test_bootstrap_ci_is_seeded_and_pairs_items():
    first = bootstrap_ci(raw_agreement, X, Y, n_boot=200, seed=3)
    assert first == bootstrap_ci(raw_agreement, X, Y, n_boot=200, seed=3)
    assert first != bootstrap_ci(raw_agreement, X, Y, n_boot=200, seed=4)
    # Items are resampled together: identical raters agree on every resample.
    assert bootstrap_ci(raw_agreement, X, X, n_boot=200) == (1.0, 1.0)


def test_bootstrap_ci_of_a_mean_matches_the_normal_approximation():
    values = np.random.default_rng(0).normal(size=400)
    low, high = bootstrap_ci(np.mean, values, n_boot=2000)
    half_width = 1.96 * values.std() / math.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half_width, abs=0.02)
    assert high == pytest.approx(values.mean() + half_width, abs=0.02)


def test_bootstrap_ci_degenerate():
    assert all(math.isnan(v) for v in bootstrap_ci(cohen_kappa, [], []))
    # Every resample of a single-label sample leaves κ undefined.
    assert all(math.isnan(v) for v in bootstrap_ci(cohen_kappa, ["a"] * 5, ["a"] * 5))
    with pytest.raises(ValueError, match="different lengths"):
        bootstrap_ci(raw_agreement, ["a"], [])


def test_confusion():
    result = confusion(X + ["tie", "invalid"], Y + ["a", "a"], labels=["a", "b", "tie"])
    # rows: x; columns: y. The "invalid" item is outside the labels and left out.
    assert result == Confusion(["a", "b", "tie"], [[4, 2, 0], [1, 3, 0], [1, 0, 0]])


def test_confusion_degenerate():
    assert confusion([], [], ["a", "b"]) == Confusion(["a", "b"], [[0, 0], [0, 0]])
    assert confusion(["x"], ["y"], ["a"]) == Confusion(["a"], [[0]])


def test_krippendorff_alpha_by_hand():
    # Units (r1, r2): (a,a) (a,a) (b,b) (b,a). Coincidences: o_aa = 4, o_bb = 2, o_ab = o_ba = 1; n = 8,
    # n_a = 5, n_b = 3. D_o = 2/8; D_e = 2·5·3 / (8·7) = 30/56. α = 1 − (2/8)/(30/56) = 1 − 7/15 = 8/15.
    assert krippendorff_alpha([["a", "a", "b", "b"], ["a", "a", "b", "a"]]) == pytest.approx(8 / 15)


def test_krippendorff_alpha_is_one_for_perfect_agreement():
    assert krippendorff_alpha([["a", "b", "tie", "a"]] * 3) == pytest.approx(1.0)


def test_krippendorff_alpha_with_missing_values():
    complete = [["a", "a", "b", "b"], ["a", "a", "b", "a"]]
    # A third rater who rated one unit, and a unit only one rater saw (not pairable): α is unchanged
    # by the unit, and the third rater's agreeing label adds coincidences.
    with_missing = [["a", "a", "b", "b", "a"], ["a", "a", "b", "a", None], [None, float("nan"), None, None, None]]
    assert krippendorff_alpha(with_missing) == pytest.approx(8 / 15)
    assert krippendorff_alpha([complete[0], complete[1], ["a", None, None, None]]) != pytest.approx(8 / 15)


def test_krippendorff_alpha_known_value():
    # The worked example in Krippendorff (2011) and the krippendorff package: nominal α = 0.691.
    nan = None
    data = [
        [nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
        [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
        [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4],
    ]
    assert krippendorff_alpha(data) == pytest.approx(0.691358, abs=1e-6)


def test_krippendorff_alpha_degenerate():
    assert math.isnan(krippendorff_alpha([]))
    assert math.isnan(krippendorff_alpha([["a", "a"], ["a", "a"]]))  # one label: no chance agreement to beat
    assert math.isnan(krippendorff_alpha([["a", None], [None, "b"]]))  # no unit rated twice
    estimate = krippendorff_alpha_ci([])
    assert all(math.isnan(v) for v in (estimate.value, estimate.low, estimate.high))


def test_krippendorff_alpha_ci_contains_the_estimate():
    rng = np.random.default_rng(0)
    truth = rng.choice(["a", "b", "tie"], size=60)
    noisy = [[label if rng.random() < 0.8 else "b" for label in truth] for _ in range(3)]
    estimate = krippendorff_alpha_ci(noisy, n_boot=300)
    assert estimate.value == pytest.approx(krippendorff_alpha(noisy))
    assert estimate.low < estimate.value < estimate.high


def test_wilson_by_hand():
    # 7 of 10, z = 1.96: p = .7, z²/n = .38416; centre = (.7 + .19208)/1.38416 = .64449;
    # half width = 1.96·sqrt(.021 + .009604)/1.38416 = .24772 → (.39677, .89221).
    low, high = wilson_interval(7, 10)
    assert (low, high) == (pytest.approx(0.39677, abs=1e-5), pytest.approx(0.89221, abs=1e-5))
    # 0 of 10: centre = half width = 1.96·sqrt(.009604)/1.38416 = .13877 → (0, .27754).
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27754, abs=1e-5))


@pytest.mark.parametrize(("k", "n"), [(0, 1), (3, 7), (40, 50), (50, 50)])
def test_wilson_agrees_with_scipy_on_whole_counts(k, n):
    expected = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n, z=scipy_stats.norm.ppf(0.975))
    assert (low, high) == (pytest.approx(expected.low), pytest.approx(expected.high))


def test_wilson_degenerate_and_invalid():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_win_rate_counts_ties_as_halves():
    # The thesis headline: 40 of 50 preferred → 80%.
    result = win_rate(40, 0, 10)
    assert result.rate == pytest.approx(0.8) and result.n == 50
    assert (result.low, result.high) == wilson_interval(40, 50)
    assert win_rate(3, 2, 5) == WinRate(0.4, *wilson_interval(4, 10), 10)
    assert result.low < result.rate < result.high


def test_win_rate_degenerate():
    result = win_rate(0, 0, 0)
    assert result.n == 0 and all(math.isnan(v) for v in (result.rate, result.low, result.high))
    with pytest.raises(ValueError):
        win_rate(-1, 0, 0)


def test_elo_by_hand():
    # Equal ratings → expected .5; a win moves each by k·.5 = 8.
    assert elo([("x", "y", 1)]) == {"x": 1008.0, "y": 992.0}
    assert elo([("x", "y", 0.5)]) == {"x": 1000.0, "y": 1000.0}
    assert elo([("x", "y", 0)], k=32, initial=1500) == {"x": 1484.0, "y": 1516.0}
    assert elo([]) == {}
    with pytest.raises(ValueError):
        elo([("x", "y", 2)])
    with pytest.raises(ValueError):
        elo([("x", "x", 1)])


TRUE_STRENGTH = {"m1": 1.5, "m2": 0.7, "m3": 0.0, "m4": -1.0}  # log-scale


def synthetic_matches(n: int, seed: int) -> list[tuple[str, str, float]]:
    """Votes drawn from a Bradley–Terry model with TRUE_STRENGTH, 10% ties."""
    rng = np.random.default_rng(seed)
    items = list(TRUE_STRENGTH)
    matches = []
    for _ in range(n):
        x, y = rng.choice(items, size=2, replace=False)
        p = 1 / (1 + math.exp(TRUE_STRENGTH[y] - TRUE_STRENGTH[x]))
        roll = rng.random()
        matches.append((str(x), str(y), 0.5 if roll < 0.1 else float(roll < 0.1 + 0.9 * p)))
    return matches


def ranking(scores: dict) -> list:
    return sorted(scores, key=scores.get, reverse=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elo_and_bradley_terry_recover_a_known_order(seed):
    matches = synthetic_matches(600, seed)
    assert ranking(elo(matches)) == ["m1", "m2", "m3", "m4"]
    assert ranking(bradley_terry(matches)) == ["m1", "m2", "m3", "m4"]


def test_bradley_terry_recovers_strengths():
    strengths = bradley_terry(synthetic_matches(3000, seed=5))
    mean = sum(TRUE_STRENGTH.values()) / len(TRUE_STRENGTH)
    assert sum(strengths.values()) == pytest.approx(0.0, abs=1e-9)  # centred
    for item, true in TRUE_STRENGTH.items():
        assert strengths[item] == pytest.approx(true - mean, abs=0.25)


def test_bradley_terry_by_hand_and_degenerate():
    # x beats y as often as y beats x → equal strengths.
    even = {"x": pytest.approx(0.0, abs=1e-6), "y": pytest.approx(0.0, abs=1e-6)}
    assert bradley_terry([("x", "y", 1), ("y", "x", 1)]) == even
    assert bradley_terry([("x", "y", 0.5)]) == even  # ties only
    # Undefeated stays finite thanks to the prior.
    undefeated = bradley_terry([("x", "y", 1)] * 5)
    assert math.isfinite(undefeated["x"]) and undefeated["x"] > 0 > undefeated["y"]
    assert bradley_terry([]) == {}


@pytest.mark.parametrize("method", ["elo", "bradley_terry"])
def test_bootstrap_rankings(method):
    matches = synthetic_matches(400, seed=7)
    result = bootstrap_rankings(matches, method=method, n_boot=200, seed=1)
    point = elo(matches) if method == "elo" else bradley_terry(matches)
    assert set(result) == set(TRUE_STRENGTH)
    for item, estimate in result.items():
        assert isinstance(estimate, Estimate)
        assert estimate.value == pytest.approx(point[item])
        assert estimate.low < estimate.high
    # The best and the worst are clearly separated.
    assert result["m1"].low > result["m4"].high
    if method == "bradley_terry":  # Elo depends on match order, so its point need not sit inside
        assert all(e.low <= e.value <= e.high for e in result.values())


def test_bootstrap_rankings_degenerate():
    assert bootstrap_rankings([], n_boot=10) == {}
    with pytest.raises(ValueError, match="unknown ranking method"):
        bootstrap_rankings([("x", "y", 1)], method="glicko")
    # An item that appears once is missing from some resamples; its interval uses the others.
    result = bootstrap_rankings([("x", "y", 1)] * 20 + [("y", "z", 1)], method="bradley_terry", n_boot=50)
    assert all(math.isfinite(v) for e in result.values() for v in (e.value, e.low, e.high))


def test_rank_correlations():
    truth = {"m1": 4, "m2": 3, "m3": 2, "m4": 1}
    assert spearman(truth, {"m1": 0.9, "m2": 0.5, "m3": 0.1, "m4": -2}) == pytest.approx(1.0)
    assert kendall(truth, {"m1": 1, "m2": 2, "m3": 3, "m4": 4}) == pytest.approx(-1.0)
    # One swapped neighbour pair: 5 of 6 pairs concordant → τ = (5 − 1)/6; ρ = 1 − 6·2/(4·15) = 0.8.
    swapped = {"m1": 4, "m2": 3, "m3": 1, "m4": 2}
    assert kendall(truth, swapped) == pytest.approx(4 / 6)
    assert spearman(truth, swapped) == pytest.approx(0.8)
    # Only common items count.
    assert spearman(truth, {"m1": 2, "m4": 1, "other": 9}) == pytest.approx(1.0)


def test_rank_correlations_degenerate():
    assert math.isnan(spearman({}, {}))
    assert math.isnan(kendall({"a": 1}, {"a": 1}))
    assert math.isnan(spearman({"a": 1, "b": 1}, {"a": 1, "b": 2}))  # constant ranking
