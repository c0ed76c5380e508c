"""Which pairs of a sample's valid candidates to compare: every pair (``all_pairs``), the knockout tournament of
the original thesis (``Tournament``: n − 1 matches, more preferences by transitivity), or the pairs the judges
are least sure about (``active_pairs``). Plain Python on ids: the caller judges each match.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

Id = Hashable
Match = tuple[Any, Any]


def all_pairs(ids: Sequence[Id]) -> list[Match]:
    """Every unordered pair once, in the order of ``ids``: n(n−1)/2 pairs."""
    _check_unique(ids)
    return list(itertools.combinations(ids, 2))


@dataclass(frozen=True)
class Preference:
    chosen: Any
    rejected: Any
    implied: bool  # True when inferred by transitivity rather than judged directly
    match: Match  # the judged match this preference comes from


@dataclass(frozen=True)
class MatchResult:
    round: int
    a: Any
    b: Any
    winner: Any | None  # None: tie or inconsistent across orders


class Tournament:
    """Single-elimination knockout, driven by the caller round by round.

    Round 1 pairs the ids in the given order: (1st, 2nd), (3rd, 4th), … — shuffle them first if seeding
    should not matter. With an odd number of entrants the last one gets a bye and advances unjudged; it is
    placed first in the next round so that it plays there and nobody gets two byes in a row.

    A tie (or a verdict inconsistent across orders) must still send someone on: the match's first
    candidate advances, but no preference is derived from that match, and the advancing candidate does not
    take over anything the other had beaten.

    Preferences: a match's winner is preferred over the loser (direct) and over everyone the loser had
    beaten, directly or through those it beat (implied, by transitivity). With 2^k candidates and no ties,
    round r has 2^(k−r) matches whose losers carry 2^(r−1) − 1 beaten candidates each, so every round yields
    2^(k−r) · 2^(r−1) = 2^(k−1) preferences and the tournament k · 2^(k−1):
      8 candidates: 4 + 2 + 1 = 7 matches; 4·1 + 2·2 + 1·4 = 12 preferences (7 direct, 5 implied).
      16 candidates: 8 + 4 + 2 + 1 = 15 matches; 8·1 + 4·2 + 2·4 + 1·8 = 32 preferences (15 direct, 17 implied).
    """

    def __init__(self, ids: Sequence[Id]) -> None:
        _check_unique(ids)
        self.round = 1
        self.results: list[MatchResult] = []
        self._entrants: list[Any] = list(ids)
        self._beaten: dict[Any, list[Any]] = {i: [] for i in ids}
        self._preferences: list[Preference] = []
        self._matches: list[Match] = []
        self._advancing: dict[Match, Any] = {}
        self._bye: list[Any] = []  # the entrant with a bye this round, if any
        self._start_round()

    @property
    def done(self) -> bool:
        return len(self._entrants) <= 1

    @property
    def champion(self) -> Any | None:
        return self._entrants[0] if len(self._entrants) == 1 else None

    def next_matches(self) -> list[Match]:
        """The current round's matches not yet recorded (independent: they may be judged in parallel)."""
        return [m for m in self._matches if m not in self._advancing]

    def record(self, a: Id, b: Id, winner: Id | None) -> None:
        """Report the outcome of a pending match; ``winner`` is a, b, or None for a tie/inconsistent."""
        match = (a, b) if (a, b) in self._matches else (b, a)
        if match not in self.next_matches():
            raise ValueError(f"({a!r}, {b!r}) is not a pending match of round {self.round}")
        if winner is not None and winner not in match:
            raise ValueError(f"winner {winner!r} did not play in ({a!r}, {b!r})")
        self.results.append(MatchResult(self.round, match[0], match[1], winner))
        if winner is None:
            self._advancing[match] = match[0]
        else:
            self._win(winner, match[1] if winner == match[0] else match[0], match)
            self._advancing[match] = winner
        if not self.next_matches():
            self._entrants = self._bye + [self._advancing[m] for m in self._matches]
            self.round += 1
            self._start_round()

    def preferences(self) -> list[Preference]:
        return list(self._preferences)

    def _win(self, winner: Any, loser: Any, match: Match) -> None:
        self._preferences.append(Preference(winner, loser, implied=False, match=match))
        self._preferences += [Preference(winner, x, implied=True, match=match) for x in self._beaten[loser]]
        self._beaten[winner] += [loser, *self._beaten[loser]]

    def _start_round(self) -> None:
        entrants = self._entrants if len(self._entrants) > 1 else []
        self._matches = list(zip(entrants[0::2], entrants[1::2]))
        self._bye = entrants[-1:] if len(entrants) % 2 else []
        self._advancing = {}


def run_tournament(ids: Sequence[Id], judge_fn: Callable[[Any, Any], Any | None]) -> Tournament:
    """Play a whole tournament with ``judge_fn(a, b) -> a | b | None`` and return it."""
    tournament = Tournament(ids)
    while not tournament.done:
        for a, b in tournament.next_matches():
            tournament.record(a, b, judge_fn(a, b))
    return tournament


@dataclass(frozen=True)
class PairStats:
    """What the judges have said so far about one pair, in canonical terms (see ``verdicts``)."""

    pair: Match
    a: int = 0  # combined (both-order) verdicts preferring canonical a
    b: int = 0
    tie: int = 0
    inconsistent: int = 0
    confidence: float | None = None  # mean judge probability that a is better, when judges report one


def uncertainty(stats: PairStats) -> float:
    """How unsure the judges are about a pair, from 0 (sure) to 1 (no idea).

    From the votes: p = (a + ½·(tie + inconsistent)) / all votes is the judges' share for a, counting a
    verdict that flipped with the order, or a tie, as half a vote each way; the vote score is
    1 − |2p − 1|, so unanimous a or b → 0 and an even split, all flips or all ties → 1 (a pair the judge
    cannot separate is exactly where an expert's vote adds most). From a reported confidence c the score
    is 1 − |2c − 1| (c = 0.5 → 1). The result is the mean of the scores available; a pair with no votes
    and no confidence scores 1, as nothing is known about it.
    """
    scores = []
    votes = stats.a + stats.b + stats.tie + stats.inconsistent
    if votes:
        p = (stats.a + 0.5 * (stats.tie + stats.inconsistent)) / votes
        scores.append(1 - abs(2 * p - 1))
    if stats.confidence is not None:
        scores.append(1 - abs(2 * stats.confidence - 1))
    return sum(scores) / len(scores) if scores else 1.0


def active_pairs(candidates: Sequence[PairStats], limit: int) -> list[PairStats]:
    """The ``limit`` most uncertain pairs, most uncertain first; equal scores keep their input order."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return sorted(candidates, key=uncertainty, reverse=True)[:limit]


def _check_unique(ids: Sequence[Id]) -> None:
    if len(set(ids)) != len(ids):
        raise ValueError("candidate ids must be unique")
    if None in ids:
        raise ValueError("None cannot be a candidate id: it means 'no winner'")
