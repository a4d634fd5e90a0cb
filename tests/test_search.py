"""Hyper-parameter search (imagenet_book.search): grid, random and Optuna's TPE on objectives
whose best point is known, the budget honoured, NaN trials never chosen, clear errors."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from imagenet_book import search
from imagenet_book.search import Choice, LogUniform, Uniform

SPACE = {"lr": LogUniform(1e-4, 1.0), "wd": LogUniform(1e-5, 1e-1)}


def peak(params: dict) -> float:
    """Best at lr = 1e-2 (log10 = -2); wd barely matters: the situation random search is for."""
    return -(math.log10(params["lr"]) + 2) ** 2 - 0.01 * (math.log10(params["wd"]) + 3) ** 2


def test_grid_points_fill_the_budget_with_log_spaced_values():
    points = search.grid_points(SPACE, 9)
    assert len(points) == 9
    lrs = sorted({p["lr"] for p in points})
    assert np.allclose(lrs, [1e-4, 1e-2, 1.0])
    assert len(search.grid_points(SPACE, 15)) == 9  # 4 x 4 = 16 does not fit: still 3 per axis
    assert len(search.grid_points(SPACE, 16)) == 16


def test_grid_gives_a_small_choice_all_its_values_and_the_rest_to_the_others():
    space = {"opt": Choice(["sgd", "adamw"]), "lr": LogUniform(1e-3, 1e-1)}
    points = search.grid_points(space, 8)
    assert len(points) == 8
    assert {p["opt"] for p in points} == {"sgd", "adamw"}
    assert len({p["lr"] for p in points}) == 4


def test_grid_search_finds_the_best_grid_point():
    result = search.grid_search(peak, SPACE, 9)
    assert [t.number for t in result.trials] == list(range(9))
    assert result.best.params["lr"] == pytest.approx(1e-2)
    assert result.best.score == max(t.score for t in result.trials)


def test_random_search_is_seeded_within_bounds_and_tries_distinct_values():
    a = search.random_search(peak, SPACE, 12, seed=3)
    b = search.random_search(peak, SPACE, 12, seed=3)
    c = search.random_search(peak, SPACE, 12, seed=4)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.params for t in a.trials] != [t.params for t in c.trials]
    for t in a.trials:
        assert 1e-4 <= t.params["lr"] <= 1.0 and 1e-5 <= t.params["wd"] <= 1e-1
    assert len({t.params["lr"] for t in a.trials}) == 12  # a grid of 12 tries 3 learning rates


def test_random_search_gets_close_to_the_optimum_with_enough_trials():
    result = search.random_search(peak, SPACE, 60, seed=0)
    assert abs(math.log10(result.best.params["lr"]) + 2) < 0.3


def test_best_so_far_is_monotone_and_skips_nan():
    assert search.best_so_far([0.1, math.nan, 0.3, 0.2]) == [0.1, 0.1, 0.3, 0.3]
    assert search.best_so_far([2.0, 1.0, 3.0], maximize=False) == [2.0, 1.0, 1.0]
    first = search.best_so_far([math.nan, 0.5])
    assert math.isnan(first[0]) and first[1] == 0.5


def test_a_diverged_trial_is_kept_but_never_best():
    def objective(params):
        return math.nan if params["lr"] > 0.1 else peak(params)

    result = search.grid_search(objective, SPACE, 9)
    assert sum(math.isnan(t.score) for t in result.trials) == 3
    assert math.isfinite(result.best.score)


def test_minimize():
    result = search.grid_search(lambda p: -peak(p), SPACE, 9, maximize=False)
    assert result.best.params["lr"] == pytest.approx(1e-2)


def test_all_failed_trials_give_a_clear_error():
    result = search.random_search(lambda p: math.nan, SPACE, 3)
    with pytest.raises(ValueError, match="no trial with a finite score"):
        result.best


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="budget"):
        search.random_search(peak, SPACE, 0)
    with pytest.raises(ValueError, match="empty"):
        search.grid_search(peak, {}, 4)
    with pytest.raises(TypeError, match="'lr'"):
        search.random_search(peak, {"lr": (1e-3, 1.0)}, 4)
    with pytest.raises(ValueError, match="0 < low < high"):
        LogUniform(0.0, 1.0)
    with pytest.raises(ValueError, match="low < high"):
        Uniform(1.0, 0.5)
    with pytest.raises(TypeError, match="must return a number"):
        search.random_search(lambda p: "good", SPACE, 2)


def test_uniform_and_choice_grids_and_samples():
    assert Uniform(0.0, 0.5).grid(3) == [0.0, 0.25, 0.5]
    assert Uniform(0.0, 1.0).grid(1) == [0.5]
    assert Choice([1, 2, 3]).grid(5) == [1, 2, 3]
    rng = np.random.default_rng(0)
    assert all(Choice("ab").sample(rng) in "ab" for _ in range(10))


def test_optuna_search_is_seeded_and_learns():
    pytest.importorskip("optuna")
    a = search.optuna_search(peak, SPACE, 20, seed=1)
    b = search.optuna_search(peak, SPACE, 20, seed=1)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert len(a.trials) == 20 and a.method == "optuna (TPE)"
    for t in a.trials:
        assert 1e-4 <= t.params["lr"] <= 1.0
    # after its random start-up trials, TPE samples near the good region more than chance does
    late = [abs(math.log10(t.params["lr"]) + 2) for t in a.trials[10:]]
    assert np.median(late) < 1.0  # uniform over 4 decades would give a median distance of ~1.25


def test_optuna_search_survives_failed_trials():
    pytest.importorskip("optuna")
    result = search.optuna_search(lambda p: math.nan if p["lr"] > 0.1 else peak(p), SPACE, 8, seed=0)
    assert len(result.trials) == 8 and math.isfinite(result.best.score)


def test_missing_optuna_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    with pytest.raises(ImportError, match="pip install optuna"):
        search.optuna_search(peak, SPACE, 3)
