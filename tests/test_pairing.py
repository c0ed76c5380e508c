import pytest

from annotation.judging.pairing import (
    MatchResult,
    PairStats,
    Preference,
    Tournament,
    active_pairs,
    all_pairs,
    run_tournament,
    uncertainty,
)


def better(a, b):
    """A perfectly consistent judge: the higher id is the better candidate."""
    return max(a, b)


def test_all_pairs():
    assert all_pairs([3, 1, 2]) == [(3, 1), (3, 2), (1, 2)]
    assert len(all_pairs(range(8))) == 28
    assert all_pairs([1]) == []
    assert all_pairs([]) == []


@pytest.mark.parametrize("ids", [[1, 1, 2], [1, None]])
def test_ids_must_be_unique_and_not_none(ids):
    with pytest.raises(ValueError):
        Tournament(ids)
    with pytest.raises(ValueError):
        all_pairs(ids)


def test_four_candidates_by_hand():
    t = Tournament([1, 2, 3, 4])
    assert t.next_matches() == [(1, 2), (3, 4)]
    t.record(1, 2, 2)
    assert t.next_matches() == [(3, 4)]  # round 1 is not over yet
    t.record(4, 3, 4)  # either orientation is accepted
    assert t.round == 2 and t.next_matches() == [(2, 4)]
    t.record(2, 4, 4)
    assert t.done and t.champion == 4 and t.next_matches() == []
    assert t.preferences() == [
        Preference(2, 1, implied=False, match=(1, 2)),
        Preference(4, 3, implied=False, match=(3, 4)),
        Preference(4, 2, implied=False, match=(2, 4)),
        Preference(4, 1, implied=True, match=(2, 4)),  # 4 > 2 and 2 > 1
    ]
    assert t.results == [MatchResult(1, 1, 2, 2), MatchResult(1, 3, 4, 4), MatchResult(2, 2, 4, 4)]


# 8 candidates: rounds of 4, 2, 1 matches = 7 judged. Round r's losers carry 2^(r-1) - 1 beaten candidates,
# so the rounds give 4·1 + 2·2 + 1·4 = 12 preferences (7 direct + 5 implied).
# 16 candidates: 8 + 4 + 2 + 1 = 15 matches; 8·1 + 4·2 + 2·4 + 1·8 = 32 preferences (15 direct + 17 implied).
@pytest.mark.parametrize(
    ("n", "matches", "preferences", "implied"), [(2, 1, 1, 0), (4, 3, 4, 1), (8, 7, 12, 5), (16, 15, 32, 17)]
)
def test_thesis_counts(n, matches, preferences, implied):
    calls = []
    t = run_tournament(list(range(n)), lambda a, b: calls.append((a, b)) or better(a, b))
    prefs = t.preferences()
    assert len(calls) == matches
    assert len(prefs) == preferences
    assert sum(p.implied for p in prefs) == implied
    assert t.champion == n - 1
    # With a consistent judge every derived preference is true, and none repeats.
    assert all(p.chosen > p.rejected for p in prefs)
    assert len({(p.chosen, p.rejected) for p in prefs}) == len(prefs)


def test_matches_of_a_round_come_together():
    t = Tournament(list(range(8)))
    assert t.next_matches() == [(0, 1), (2, 3), (4, 5), (6, 7)]
    for a, b in t.next_matches():
        t.record(a, b, b)
    assert t.next_matches() == [(1, 3), (5, 7)]


def test_odd_count_bye_advances_and_plays_first_next_round():
    t = Tournament([1, 2, 3, 4, 5])
    assert t.next_matches() == [(1, 2), (3, 4)]  # 5 has a bye
    t.record(1, 2, 2)
    t.record(3, 4, 4)
    assert t.next_matches() == [(5, 2)]  # 4 now has the bye; 5 does not get two in a row
    t.record(5, 2, 5)
    assert t.next_matches() == [(4, 5)]
    t.record(4, 5, 5)
    assert t.done and t.champion == 5
    assert len(t.results) == 4  # n - 1 matches, byes are not matches
    assert {(p.chosen, p.rejected) for p in t.preferences()} == {(2, 1), (4, 3), (5, 2), (5, 1), (5, 4), (5, 3)}


def test_tie_advances_the_first_and_derives_no_preference():
    t = Tournament([1, 2, 3, 4])
    t.record(1, 2, 2)
    t.record(3, 4, None)  # tie or inconsistent across orders
    assert t.next_matches() == [(2, 3)]  # 3, the match's first candidate, advances
    t.record(2, 3, 3)
    assert t.champion == 3
    # From the tie: nothing. 3 beating 2 also implies 3 > 1; nothing about 4.
    assert [(p.chosen, p.rejected, p.implied) for p in t.preferences()] == [(2, 1, False), (3, 2, False), (3, 1, True)]


def test_record_checks_its_input():
    t = Tournament([1, 2, 3, 4])
    with pytest.raises(ValueError, match="not a pending match"):
        t.record(1, 3, 1)
    with pytest.raises(ValueError, match="did not play"):
        t.record(1, 2, 3)
    t.record(1, 2, 1)
    with pytest.raises(ValueError, match="not a pending match"):
        t.record(1, 2, 1)  # already recorded


@pytest.mark.parametrize("ids", [[], [7]])
def test_nothing_to_play(ids):
    t = Tournament(ids)
    assert t.done and t.next_matches() == [] and t.preferences() == []
    assert t.champion == (ids[0] if ids else None)


def test_run_tournament_with_string_ids():
    t = run_tournament(["p3", "p1", "p2"], lambda a, b: min(a, b))
    assert t.champion == "p1"
    assert len(t.results) == 2


# --- active pairs


@pytest.mark.parametrize(
    ("stats", "score"),
    [
        (PairStats((1, 2), a=4), 0.0),  # unanimous
        (PairStats((1, 2), b=3), 0.0),
        (PairStats((1, 2), a=2, b=2), 1.0),  # judges split evenly
        (PairStats((1, 2), inconsistent=2), 1.0),  # every judgement flipped with the order
        (PairStats((1, 2), tie=1), 1.0),
        (PairStats((1, 2), a=3, inconsistent=1), 0.25),  # p = 3.5/4 → 1 − |1.75 − 1|
        (PairStats((1, 2), a=2, b=1), pytest.approx(2 / 3)),  # p = 2/3 → 1 − 1/3
        (PairStats((1, 2), confidence=0.5), 1.0),
        (PairStats((1, 2), confidence=0.9), pytest.approx(0.2)),
        (PairStats((1, 2), a=4, confidence=0.5), 0.5),  # mean of 0 (votes) and 1 (confidence)
        (PairStats((1, 2)), 1.0),  # nothing known
    ],
)
def test_uncertainty(stats, score):
    assert uncertainty(stats) == score


def test_active_pairs_ranks_most_uncertain_first():
    sure = PairStats(("p1", "p2"), a=4)
    split = PairStats(("p1", "p3"), a=1, b=1)
    leaning = PairStats(("p2", "p3"), a=3, b=1)
    flipped = PairStats(("p3", "p4"), inconsistent=3)
    ranked = active_pairs([sure, split, leaning, flipped], limit=3)
    assert ranked == [split, flipped, leaning]  # equal scores keep their input order
    assert active_pairs([sure, split], limit=0) == []
    assert active_pairs([], limit=5) == []
    with pytest.raises(ValueError):
        active_pairs([sure], limit=-1)
