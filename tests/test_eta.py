"""The one ETA every live page shows: smoothed over the recent rate, with an error it keeps to."""

import random

from annotation.jobs.eta import WINDOW, add_point, duration, estimate


def noisy_run(seed: int, items: int = 60, mean_s: float = 5.0, start: float = 1000.0):
    """(time, done) after each item of a run whose items take mean_s ± 50%, uniformly."""
    rng, t = random.Random(seed), start
    for done in range(1, items + 1):
        t += rng.uniform(0.5, 1.5) * mean_s
        yield t, done


def jumps(seed: int, items: int = 60) -> list[tuple[float, float]]:
    """(jump, error) at each update: how far the ETA moved beyond the time that passed, and the previous ETA's
    own error."""
    points, previous, found = [], None, []
    for t, done in noisy_run(seed, items):
        points = add_point(points, t, done)
        now = estimate(points, items)
        if previous is not None and previous[1] is not None and previous[1].error_s is not None:
            found.append((abs(now.eta_s - (previous[1].eta_s - (t - previous[0]))), previous[1].error_s))
        previous = (t, now)
    return found


def test_on_a_noisy_run_the_eta_never_jumps_by_more_than_its_error():
    found = jumps(seed=0)
    assert len(found) > 40
    assert all(jump <= error for jump, error in found)


def test_over_many_noisy_runs_the_error_holds_at_well_over_95_percent_of_updates():
    found = [pair for seed in range(100) for pair in jumps(seed)]
    outside = sum(jump > error for jump, error in found)
    assert outside / len(found) < 0.02, f"{outside} of {len(found)} updates jumped by more than their error"


def test_a_slow_start_does_not_drag_the_eta_once_the_window_has_moved_on():
    # The first item took 10 minutes (loading a model), the rest 5 s each: the rate soon says 5 s.
    points = add_point([], 0, 0)
    points = add_point(points, 600, 1)
    for done in range(2, 2 + WINDOW + 1):
        points = add_point(points, 600 + 5 * (done - 1), done)
    found = estimate(points, total=100)
    assert abs(found.per_item_s - 5) < 1e-9 and abs(found.eta_s - 5 * (100 - points[-1][1])) < 1e-6


def test_between_updates_the_eta_counts_down_with_the_clock():
    points = [[0, 0], [10, 1], [20, 2], [30, 3], [40, 4]]
    assert estimate(points, 10).eta_s == 60 and estimate(points, 10, now=55).eta_s == 45
    assert estimate(points, 10, now=500).eta_s == 0


def test_no_estimate_until_there_is_a_rate_and_no_error_until_three_intervals():
    assert estimate([], 10) is None and estimate([[5, 1]], 10) is None and estimate([[5, 1], [5, 1]], 10) is None
    assert estimate([[0, 0], [10, 1], [20, 2]], 10).error_s is None
    assert estimate([[0, 0], [10, 1], [20, 2], [30, 3]], 10).error_s == 0


def test_points_keep_the_window_and_skip_updates_that_moved_nothing():
    points = []
    for done in range(30):
        points = add_point(points, done * 2.0, done)
    assert len(points) == WINDOW + 1 and points[-1] == [58.0, 29]
    assert add_point(points, 99.0, 29) == points


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (4.4, 89, 95, 3600, 5400, 7500)] == ["4 s", "89 s", "2 min", "60 min", "1 h 30 min",
                                                                       "2 h 5 min"]
