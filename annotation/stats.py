"""Agreement and ranking statistics on plain lists: raw agreement, Cohen's κ, Krippendorff's α, confusion
matrices, bootstrap and Wilson intervals, Elo and Bradley–Terry; the libraries (scikit-learn, scipy,
krippendorff) do the work. Undefined statistics are NaN, never an exception; invalid input raises ValueError.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import krippendorff
import numpy as np
from scipy import optimize, special, stats
from sklearn.metrics import cohen_kappa_score, confusion_matrix

NAN = math.nan
Match = tuple[Hashable, Hashable, float]  # (x, y, score of x: 1 win, 0.5 tie, 0 loss)

_COLLAPSED = {"a": "a", "b": "b", "tie": "neither", "both_bad": "neither", "inconsistent": "neither"}


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float



# --- agreement ---------------------------------------------------------------------------------------


def raw_agreement(x: Sequence[Hashable], y: Sequence[Hashable], drop: Iterable[Hashable] | None = None) -> float:
    """Share of items on which x and y agree, leaving out items where either label is in ``drop``
    (e.g. ``drop={"tie"}`` for agreement without ties). NaN when no item is left."""
    pairs = _pairs(x, y, drop)
    if not pairs:
        return NAN
    return sum(a == b for a, b in pairs) / len(pairs)


def collapse(label: str) -> str:
    """Four-way expert choice (a / b / tie / both_bad) → three-way a / b / neither.

    A judge's "inconsistent" (its verdict flipped with the order) also means "neither is preferred".
    """
    if label not in _COLLAPSED:
        raise ValueError(f"unknown label {label!r}; expected one of {sorted(_COLLAPSED)}")
    return _COLLAPSED[label]


def cohen_kappa(x: Sequence[Hashable], y: Sequence[Hashable], labels: Sequence[Hashable] | None = None) -> float:
    """Cohen's κ (scikit-learn). NaN when undefined: no items, or both raters used one and the same label
    (chance agreement is then 1 and κ = 0/0)."""
    _same_length(x, y)
    if len(x) == 0:
        return NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on the undefined case, which we report as NaN
        return float(cohen_kappa_score(list(x), list(y), labels=labels, replace_undefined_by=np.nan))


@dataclass(frozen=True)
class Confusion:
    labels: list[Hashable]
    matrix: list[list[int]]  # matrix[i][j]: items x labelled labels[i] and y labelled labels[j]


def confusion(x: Sequence[Hashable], y: Sequence[Hashable], labels: Sequence[Hashable]) -> Confusion:
    """Confusion matrix of x (rows) against y (columns); items with a label outside ``labels`` are left out."""
    _same_length(x, y)
    kept = [(a, b) for a, b in zip(x, y) if a in labels and b in labels]
    if not kept:
        return Confusion(list(labels), [[0] * len(labels) for _ in labels])
    rows, columns = zip(*kept)
    matrix = confusion_matrix(list(rows), list(columns), labels=list(labels))
    return Confusion(list(labels), matrix.tolist())


def krippendorff_alpha(reliability_data: Sequence[Sequence[Any]], level: str = "nominal") -> float:
    """Krippendorff's α (krippendorff package) for several raters.

    ``reliability_data[r][u]`` is rater r's label for unit u; None or NaN where r did not rate u. Nominal
    labels may be any hashable values; other levels need numbers. NaN when undefined: fewer than two
    distinct labels in the data (even under perfect agreement: there is no chance agreement to beat), or
    no unit rated by two raters.
    """
    matrix = _reliability_matrix(reliability_data, level)
    if matrix.size == 0:
        return NAN
    try:
        return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level))
    except ValueError:  # the package's message for the undefined cases above
        return NAN


def krippendorff_alpha_ci(
    reliability_data: Sequence[Sequence[Any]],
    level: str = "nominal",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """α with a percentile bootstrap interval over units (columns)."""
    matrix = np.array(reliability_data, dtype=object, ndmin=2)
    value = krippendorff_alpha(matrix, level)
    units = np.arange(matrix.shape[1]) if matrix.size else np.arange(0)
    low, high = bootstrap_ci(
        lambda u: krippendorff_alpha(matrix[:, u], level), units, n_boot=n_boot, seed=seed, alpha=alpha
    )
    return Estimate(value, low, high)


def bootstrap_ci(
    fn: Callable[..., float], *arrays: Sequence[Any], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``fn(*arrays)``, resampling items (the same indices in every array).

    Replicates where ``fn`` is undefined (NaN, e.g. κ on a resample where one rater used a single label)
    are left out; (NaN, NaN) when none is defined or there are no items. Hand-rolled on numpy rather than
    ``scipy.stats.bootstrap`` because that one cannot skip undefined replicates and wants numeric data.
    """
    replicates = _replicates(lambda *sample: [fn(*sample)], arrays, n_boot, seed)
    low, high = _percentile_interval(replicates, alpha)
    return float(low[0]), float(high[0])


# --- proportions -------------------------------------------------------------------------------------


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion; (NaN, NaN) when n = 0.

    Written out rather than ``scipy.stats.binomtest(...).proportion_ci("wilson")`` because win rates count
    ties as half wins, so ``successes`` may be fractional, which binomtest refuses. (The tests check both
    agree on whole counts.)
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return NAN, NAN
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


@dataclass(frozen=True)
class WinRate:
    rate: float
    low: float
    high: float
    n: int


def win_rate(wins: int, ties: int, losses: int, z: float = 1.96) -> WinRate:
    """(wins + ties/2) / n with a Wilson interval; NaN rate and interval when n = 0."""
    if min(wins, ties, losses) < 0:
        raise ValueError("counts must be non-negative")
    n = wins + ties + losses
    successes = wins + ties / 2
    low, high = wilson_interval(successes, n, z)
    return WinRate(successes / n if n else NAN, low, high, n)


# --- rankings ----------------------------------------------------------------------------------------


def elo(matches: Iterable[Match], k: float = 16, initial: float = 1000) -> dict[Hashable, float]:
    """Elo ratings after playing ``matches`` in the given order (Elo depends on the order).

    Only items that played appear in the result; no matches → {}.
    """
    ratings: dict[Hashable, float] = {}
    for x, y, score in _checked(matches):
        rx, ry = ratings.setdefault(x, initial), ratings.setdefault(y, initial)
        expected = 1 / (1 + 10 ** ((ry - rx) / 400))
        ratings[x] = rx + k * (score - expected)
        ratings[y] = ry - k * (score - expected)
    return ratings


def bradley_terry(matches: Iterable[Match], prior: float = 0.1) -> dict[Hashable, float]:
    """Bradley–Terry log-strengths θ, centred on 0: P(x beats y) = 1 / (1 + exp(θy − θx)).

    A tie counts as half a win for each side. Fitted by maximising the likelihood with scipy
    (BFGS) under a weak Gaussian prior on θ (penalty ``prior``·Σθ²/2): without it an undefeated or a
    winless item has an infinite strength. Items in order of first appearance; no matches → {}. The fit itself
    takes the items in a fixed order (sorted by their text), so the same matches in another order, or with
    players swapped (x, y, s) → (y, x, 1 − s), give the very same numbers.
    """
    checked = _checked(matches)
    appearance = list(dict.fromkeys(item for x, y, _ in checked for item in (x, y)))
    items = sorted(appearance, key=repr)
    if not items:
        return {}
    index = {item: i for i, item in enumerate(items)}
    # wins[i, j]: how often i beat j, ties counting half; the likelihood only depends on these sums,
    # so each optimiser step costs O(items²) however many matches there are.
    wins = np.zeros((len(items), len(items)))
    for x, y, score in checked:
        wins[index[x], index[y]] += score
        wins[index[y], index[x]] += 1 - score

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        diff = theta[:, None] - theta[None, :]
        # −log σ(d) = logaddexp(0, −d): stable for large |d|.
        nll = np.sum(wins * np.logaddexp(0, -diff))
        pull = wins * special.expit(-diff)  # wins[i, j] · σ(−d): how much i's wins over j still push θi up
        gradient = pull.sum(axis=0) - pull.sum(axis=1) + prior * theta
        return nll + prior * np.sum(theta**2) / 2, gradient

    fit = optimize.minimize(objective, np.zeros(len(items)), jac=True, method="BFGS")
    theta = dict(zip(items, fit.x - fit.x.mean()))
    return {item: float(theta[item]) for item in appearance}


def bootstrap_rankings(
    matches: Sequence[Match],
    method: str | Callable[[Sequence[Match]], Mapping[Hashable, float]] = "bradley_terry",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[Hashable, Estimate]:
    """Each item's rating on all matches, with a percentile bootstrap interval over resampled matches.

    ``method``: "elo", "bradley_terry", or a function from matches to ratings. A resample that leaves an
    item out does not count for that item's interval. Elo depends on match order and resamples come in
    random order, so an Elo point estimate can fall outside its own interval; Bradley–Terry has no order.
    """
    rate = {"elo": elo, "bradley_terry": bradley_terry}.get(method, method) if isinstance(method, str) else method
    if not callable(rate):
        raise ValueError(f"unknown ranking method {method!r}")
    point = rate(matches)
    items = list(point)

    def ratings_of(sample: Sequence[Match]) -> list[float]:
        ratings = rate(sample)
        return [ratings.get(item, NAN) for item in items]

    replicates = _replicates(ratings_of, (list(matches),), n_boot, seed)
    low, high = _percentile_interval(replicates, alpha, width=len(items))
    return {item: Estimate(point[item], float(lo), float(hi)) for item, lo, hi in zip(items, low, high)}


def spearman(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> float:
    """Spearman's ρ between two ratings (item → score) over their common items (scipy)."""
    return _correlation(stats.spearmanr, a, b)


def kendall(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> float:
    """Kendall's τ-b between two ratings (item → score) over their common items (scipy)."""
    return _correlation(stats.kendalltau, a, b)


# --- helpers -----------------------------------------------------------------------------------------


def _correlation(method: Callable[..., Any], a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> float:
    """NaN with fewer than two common items or a constant rating."""
    common = [item for item in a if item in b]
    if len(common) < 2:
        return NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN, which we want
        result = method([a[i] for i in common], [b[i] for i in common])
    return float(result.statistic)


def _replicates(
    fn: Callable[..., Sequence[float]], arrays: Sequence[Sequence[Any]], n_boot: int, seed: int
) -> np.ndarray:
    """(n_boot, width) array of fn over item resamples; (0, 0) when there are no items."""
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"arrays have different lengths: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    if n == 0 or n_boot <= 0:
        return np.empty((0, 0))
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_boot):
        index = rng.integers(0, n, size=n)
        rows.append(fn(*(_take(a, index) for a in arrays)))
    return np.array(rows, dtype=float)


def _take(array: Sequence[Any], index: np.ndarray) -> Sequence[Any]:
    if isinstance(array, np.ndarray):
        return array[index]
    return [array[i] for i in index]


def _percentile_interval(replicates: np.ndarray, alpha: float, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the alpha/2 and 1 − alpha/2 percentiles of the defined (non-NaN) replicates."""
    low, high = np.full(width, NAN), np.full(width, NAN)
    for column in range(replicates.shape[1] if replicates.size else 0):
        values = replicates[:, column]
        values = values[~np.isnan(values)]
        if values.size:
            low[column], high[column] = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return low, high


def _pairs(x: Sequence[Hashable], y: Sequence[Hashable], drop: Iterable[Hashable] | None) -> list[tuple]:
    _same_length(x, y)
    dropped = set(drop or ())
    return [(a, b) for a, b in zip(x, y) if a not in dropped and b not in dropped]


def _same_length(x: Sequence[Any], y: Sequence[Any]) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y have different lengths: {len(x)} and {len(y)}")


def _checked(matches: Iterable[Match]) -> list[Match]:
    checked = list(matches)
    for x, y, score in checked:
        if score not in (0, 0.5, 1):
            raise ValueError(f"score must be 1, 0.5 or 0, got {score!r}")
        if x == y:
            raise ValueError(f"an item cannot play itself: {x!r}")
    return checked


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _reliability_matrix(reliability_data: Sequence[Sequence[Any]], level: str) -> np.ndarray:
    """Raters × units float matrix with NaN for missing; nominal labels are coded 0, 1, 2, …"""
    rows = [list(row) for row in reliability_data]
    if not rows or not rows[0]:
        return np.empty((0, 0))
    if len({len(row) for row in rows}) > 1:
        raise ValueError("every rater needs one entry per unit (None where missing)")
    if level == "nominal":
        codes: dict[Any, float] = {}
        return np.array([[NAN if _is_missing(v) else codes.setdefault(v, float(len(codes))) for v in row] for row in rows])
    return np.array([[NAN if _is_missing(v) else float(v) for v in row] for row in rows])
