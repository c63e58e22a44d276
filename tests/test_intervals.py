"""The paired bootstrap behind every quality figure's 95% interval."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from inference.intervals import interval, mean_of, ratio_interval, spearman_of


def test_mean_interval_covers_the_value_and_shrinks_with_more_items() -> None:
    rng = np.random.default_rng(1)
    small = (rng.random(100) < 0.8).astype(float)
    large = (rng.random(4000) < 0.8).astype(float)
    a, b = interval(mean_of(small), len(small)), interval(mean_of(large), len(large))
    assert a.value == pytest.approx(small.mean())
    assert a.low < a.value < a.high
    assert (b.high - b.low) < (a.high - a.low) / 3  # width ~ 1/sqrt(n): about 6.3x narrower
    assert b.low < 0.8 < b.high


def test_pairing_makes_the_ratio_tighter_than_unpaired_draws() -> None:
    """A student that fails exactly where its teacher fails, plus 2% more: the paired ratio's
    interval is narrow around 0.975 although each accuracy alone varies by several points."""
    rng = np.random.default_rng(2)
    teacher = (rng.random(1000) < 0.8).astype(float)
    student = teacher.copy()
    student[np.flatnonzero(teacher)[:20]] = 0.0  # 20 of the teacher's right answers go wrong
    paired = ratio_interval(mean_of(student), mean_of(teacher), 1000)
    assert paired.value == pytest.approx(student.mean() / teacher.mean())
    assert paired.low < paired.value < paired.high
    alone = interval(mean_of(teacher), 1000)
    assert (paired.high - paired.low) < (alone.high - alone.low) / 2


def test_spearman_matches_scipy_with_ties() -> None:
    predicted = [0.1, 0.4, 0.4, 0.9, 0.3, 0.3, 0.8]
    gold = [1.0, 2.0, 2.5, 5.0, 1.0, 3.0, 4.0]
    got = interval(spearman_of(predicted, gold), len(gold), resamples=200)
    assert got.value == pytest.approx(spearmanr(predicted, gold).statistic)


def test_too_few_items_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 2 items"):
        interval(mean_of([1.0]), 1)
