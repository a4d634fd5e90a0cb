"""Hyper-parameter search: grid, random, and (optionally) model-based search on the same budget.

A search calls an **objective**, ``objective(params) -> score`` (for example: train with these
hyper-parameters, return the validation accuracy), ``budget`` times, and keeps the best. The
three strategies differ only in which ``params`` they try:

* :func:`grid_search`: every combination of ``n`` values per hyper-parameter (``n ** d <=
  budget``), log-spaced for :class:`LogUniform` ranges;
* :func:`random_search`: ``budget`` independent draws from the ranges (Bergstra and Bengio,
  2012: when only a few hyper-parameters matter, random search tries ``budget`` distinct values
  of each of them where a grid tries ``budget ** (1/d)``);
* :func:`optuna_search`: Optuna's TPE sampler, which fits a model of where good scores are to
  the trials so far and draws the next one from it. Optuna is optional: it is imported only
  here, with a clear message when it is missing.

The search space is a dict ``{name: LogUniform(lo, hi) | Uniform(lo, hi) | Choice(values)}``.
A trial whose objective returns NaN (a diverged training run) is kept with its NaN score and
never counted as the best.

Taught in: chapters/10_practice.ipynb.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["Choice", "LogUniform", "SearchResult", "Trial", "Uniform", "best_so_far",
           "grid_points", "grid_search", "optuna_search", "random_search"]


# ------------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class LogUniform:
    """A positive range searched on a log scale (learning rates, weight decays).

    Taught in: chapters/10_practice.ipynb.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (0 < self.low < self.high):
            raise ValueError(f"LogUniform needs 0 < low < high, got low={self.low}, high={self.high}.")

    def grid(self, n: int) -> list[float]:
        """``n`` values, evenly spaced in log scale from ``low`` to ``high`` (the middle one if n=1)."""
        if n == 1:
            return [math.sqrt(self.low * self.high)]
        return [float(v) for v in np.geomspace(self.low, self.high, n)]

    def sample(self, rng: np.random.Generator) -> float:
        """One draw, uniform in ``log``."""
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def suggest(self, trial: Any, name: str) -> float:
        """Optuna's draw for this range."""
        return trial.suggest_float(name, self.low, self.high, log=True)


@dataclass(frozen=True)
class Uniform:
    """A range searched on a linear scale (dropout, label smoothing, momentum).

    Taught in: chapters/10_practice.ipynb.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"Uniform needs low < high, got low={self.low}, high={self.high}.")

    def grid(self, n: int) -> list[float]:
        """``n`` evenly spaced values from ``low`` to ``high`` (the middle one if n=1)."""
        if n == 1:
            return [(self.low + self.high) / 2]
        return [float(v) for v in np.linspace(self.low, self.high, n)]

    def sample(self, rng: np.random.Generator) -> float:
        """One uniform draw."""
        return float(rng.uniform(self.low, self.high))

    def suggest(self, trial: Any, name: str) -> float:
        """Optuna's draw for this range."""
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class Choice:
    """A finite set of values (an optimizer's name, a number of epochs).

    Taught in: chapters/10_practice.ipynb.
    """

    values: tuple

    def __init__(self, values: Sequence[Any]) -> None:
        object.__setattr__(self, "values", tuple(values))
        if not self.values:
            raise ValueError("Choice needs at least one value.")

    def grid(self, n: int) -> list[Any]:
        """``n`` of the values, spread over the list (all of them when ``n >= len(values)``)."""
        if n >= len(self.values):
            return list(self.values)
        return [self.values[int(i)] for i in np.linspace(0, len(self.values) - 1, n).round()]

    def sample(self, rng: np.random.Generator) -> Any:
        """One value, each equally likely."""
        return self.values[int(rng.integers(len(self.values)))]

    def suggest(self, trial: Any, name: str) -> Any:
        """Optuna's draw for this set."""
        return trial.suggest_categorical(name, list(self.values))


Space = Mapping[str, "LogUniform | Uniform | Choice"]


def _check(space: Space, budget: int) -> None:
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"budget must be an int >= 1 (the number of trials), got {budget!r}.")
    if not space:
        raise ValueError("The search space is empty: give {name: LogUniform(...) | Uniform(...) | Choice(...)}.")
    for name, dim in space.items():
        if not isinstance(dim, (LogUniform, Uniform, Choice)):
            raise TypeError(f"Search space entry {name!r} is {dim!r}: use LogUniform(low, high), "
                            "Uniform(low, high) or Choice(values).")


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Trial:
    """One call of the objective.

    Attributes:
        number: 0, 1, 2, ... in the order the search made them.
        params: the hyper-parameters tried.
        score: what the objective returned (``nan`` for a failed run).
        seconds: how long the call took.

    Taught in: chapters/10_practice.ipynb.
    """

    number: int
    params: dict[str, Any]
    score: float
    seconds: float


@dataclass
class SearchResult:
    """The trials of one search.

    Attributes:
        method: ``"grid"``, ``"random"`` or ``"optuna (TPE)"``.
        trials: every :class:`Trial`, in order.
        maximize: whether higher scores are better.
        budget: the number of trials that was allowed (a grid may use fewer).

    Taught in: chapters/10_practice.ipynb.
    """

    method: str
    trials: list[Trial] = field(default_factory=list)
    maximize: bool = True
    budget: int = 0

    @property
    def best(self) -> Trial:
        """The trial with the best finite score.

        Raises:
            ValueError: no trial has a finite score.
        """
        finite = [t for t in self.trials if math.isfinite(t.score)]
        if not finite:
            raise ValueError(f"The {self.method} search has no trial with a finite score "
                             f"({len(self.trials)} trials): every run failed or diverged.")
        return (max if self.maximize else min)(finite, key=lambda t: t.score)

    def best_so_far(self) -> list[float]:
        """The best score after each trial (``nan`` until a trial has a finite score)."""
        return best_so_far([t.score for t in self.trials], self.maximize)

    @property
    def seconds(self) -> float:
        """Total seconds spent in the objective."""
        return sum(t.seconds for t in self.trials)


def best_so_far(scores: Sequence[float], maximize: bool = True) -> list[float]:
    """Running best of ``scores``, ignoring NaN: ``[s0, best(s0, s1), ...]``.

    Taught in: chapters/10_practice.ipynb.
    """
    out, best = [], math.nan
    for s in scores:
        if math.isfinite(s) and (math.isnan(best) or (s > best if maximize else s < best)):
            best = s
        out.append(best)
    return out


def _call(objective: Callable[[dict[str, Any]], float], params: dict[str, Any],
          number: int) -> Trial:
    start = time.perf_counter()
    score = objective(dict(params))
    try:
        score = float(score)
    except (TypeError, ValueError) as err:
        raise TypeError(f"The objective must return a number (the score); trial {number} with "
                        f"{params} returned {score!r}.") from err
    return Trial(number, dict(params), score, time.perf_counter() - start)


# ------------------------------------------------------------------------------- strategies


def grid_points(space: Space, budget: int) -> list[dict[str, Any]]:
    """The grid :func:`grid_search` tries: ``n`` values per hyper-parameter, the largest ``n``
    with ``n ** d <= budget`` (a :class:`Choice` with fewer values gives all of them and leaves
    the rest of the budget to the others).

    Returns:
        ``[{name: value, ...}, ...]``, at most ``budget`` points.

    Taught in: chapters/10_practice.ipynb.
    """
    _check(space, budget)
    names = list(space)
    n = 1
    while True:  # the largest n whose grid fits the budget
        sizes = [min(n + 1, len(space[k].values)) if isinstance(space[k], Choice) else n + 1 for k in names]
        if math.prod(sizes) > budget or (n + 1) > budget:
            break
        n += 1
    values = [space[k].grid(n) for k in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)][:budget]


def grid_search(objective: Callable[[dict[str, Any]], float], space: Space, budget: int, *,
                maximize: bool = True) -> SearchResult:
    """Try every point of :func:`grid_points` ``(space, budget)``.

    Args:
        objective: ``params -> score`` (a float; NaN for a failed run).
        space: ``{name: LogUniform | Uniform | Choice}``.
        budget: the most trials to run.
        maximize: higher scores are better (``False``: lower, e.g. a loss).

    Returns:
        A :class:`SearchResult` (``method="grid"``).

    Taught in: chapters/10_practice.ipynb.
    """
    result = SearchResult("grid", maximize=maximize, budget=budget)
    for i, params in enumerate(grid_points(space, budget)):
        result.trials.append(_call(objective, params, i))
    return result


def random_search(objective: Callable[[dict[str, Any]], float], space: Space, budget: int, *,
                  seed: int = 0, maximize: bool = True) -> SearchResult:
    """Try ``budget`` independent random draws from ``space`` (a seeded NumPy generator).

    Returns:
        A :class:`SearchResult` (``method="random"``); the same seed gives the same trials.

    Taught in: chapters/10_practice.ipynb.
    """
    _check(space, budget)
    rng = np.random.default_rng(seed)
    result = SearchResult("random", maximize=maximize, budget=budget)
    for i in range(budget):
        params = {name: dim.sample(rng) for name, dim in space.items()}
        result.trials.append(_call(objective, params, i))
    return result


def optuna_search(objective: Callable[[dict[str, Any]], float], space: Space, budget: int, *,
                  seed: int = 0, maximize: bool = True, startup_trials: int | None = None) -> SearchResult:
    """Model-based search with Optuna's TPE sampler (optional dependency).

    The first ``startup_trials`` trials are random (default ``max(2, budget // 3)``; Optuna's
    own default of 10 would spend a small budget on random trials only); each later trial is
    drawn where a density model of the good trials so far is high relative to the bad ones.

    Returns:
        A :class:`SearchResult` (``method="optuna (TPE)"``).

    Raises:
        ImportError: Optuna is not installed; the message says how to install it.

    Taught in: chapters/10_practice.ipynb.
    """
    _check(space, budget)
    try:
        import optuna
    except ImportError as err:
        raise ImportError("optuna_search needs Optuna, which is not installed: "
                          "pip install optuna (or the book's dev extra: pip install -e '.[dev]'). "
                          "grid_search and random_search need nothing more.") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = max(2, budget // 3) if startup_trials is None else startup_trials
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=sampler)
    result = SearchResult("optuna (TPE)", maximize=maximize, budget=budget)

    def run(trial: Any) -> float:
        params = {name: dim.suggest(trial, name) for name, dim in space.items()}
        done = _call(objective, params, len(result.trials))
        result.trials.append(done)
        return done.score  # NaN marks the trial as failed for TPE: it learns to avoid it

    study.optimize(run, n_trials=budget)
    return result
