"""95% intervals for quality figures and teacher/student retention: the paired bootstrap.

Every figure is a statistic of per-item records (a 0/1 correct label, a SQuAD F1, a cosine with
its gold similarity). Resampling items with replacement, the same items for teacher and student,
gives the interval of each model's figure and of their ratio; pairing matters because the two
models tend to fail on the same hard items, which makes the ratio far tighter than the two
intervals alone would suggest. Percentile intervals, a fixed seed, plain numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]  # index rows [resamples, items] -> one value per row
RESAMPLES = 2000


@dataclass(frozen=True, slots=True)
class Interval:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": round(self.value, 6), "low": round(self.low, 6), "high": round(self.high, 6)}


def _indices(items: int, resamples: int, seed: int) -> np.ndarray:
    if items < 2:
        raise ValueError(f"an interval needs at least 2 items, got {items}")
    return np.random.default_rng(seed).integers(0, items, size=(resamples, items))


def _interval(value: float, draws: np.ndarray, level: float) -> Interval:
    tail = (1.0 - level) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


def mean_of(scores: Sequence[float]) -> Statistic:
    """Mean of per-item scores (accuracy from 0/1, F1, EM)."""
    values = np.asarray(scores, dtype=np.float64)
    return lambda idx: values[idx].mean(axis=-1)


def spearman_of(predicted: Sequence[float], gold: Sequence[float]) -> Statistic:
    """Spearman correlation of predicted scores (cosines) against gold over the drawn items."""
    a, b = np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    return lambda idx: _pearson(_ranks(a[idx]), _ranks(b[idx]))


def interval(statistic: Statistic, items: int, *, resamples: int = RESAMPLES, seed: int = 0,
             level: float = 0.95) -> Interval:
    """One model's figure with its bootstrap interval."""
    everything = np.arange(items)[None, :]
    return _interval(float(statistic(everything)[0]), statistic(_indices(items, resamples, seed)), level)


def ratio_interval(student: Statistic, teacher: Statistic, items: int, *, resamples: int = RESAMPLES,
                   seed: int = 0, level: float = 0.95) -> Interval:
    """Student / teacher with the paired bootstrap: both statistics on the same drawn items."""
    everything = np.arange(items)[None, :]
    idx = _indices(items, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = student(idx) / teacher(idx)
        value = float(student(everything)[0] / teacher(everything)[0])
    return _interval(value, draws, level)


def _ranks(rows: np.ndarray) -> np.ndarray:
    """Row-wise ranks with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(rows, axis=-1, kind="stable")
    sorted_rows = np.take_along_axis(rows, order, axis=-1)
    ranks = np.empty_like(rows)
    for r in range(rows.shape[0]):
        _, first, counts = np.unique(sorted_rows[r], return_index=True, return_counts=True)
        average = first + (counts - 1) / 2.0
        ranks[r, order[r]] = np.repeat(average, counts)
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        result: np.ndarray = (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    return result
