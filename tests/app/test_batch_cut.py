"""How the batcher cuts a cycle's sequences into model calls (app.batching.partition and
greedy_bounds): the cost-aware cut must be the cheapest valid split, respect both caps, and
beat equal-size chunks of the same sorted window on a long-tailed length mix."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from app.engine.cost import ServiceRate
from app.engine.cutting import greedy_bounds, partition, shares


def cost(lengths: list[int], bounds: list[int], overhead: float) -> float:
    return sum(overhead + (b - a) * max(lengths[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))


def valid(lengths: list[int], bounds: list[int], max_items: int, max_tokens: int) -> bool:
    spans = list(zip(bounds, bounds[1:], strict=False))
    return bounds[0] == 0 and bounds[-1] == len(lengths) and all(
        0 < b - a <= max_items and ((b - a) * max(lengths[a:b]) <= max_tokens or b - a == 1) for a, b in spans)


def brute_force(lengths: list[int], max_items: int, max_tokens: int, overhead: float) -> float:
    n, best = len(lengths), math.inf
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [n]
        if valid(lengths, bounds, max_items, max_tokens):
            best = min(best, cost(lengths, bounds, overhead))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_partition_is_the_cheapest_valid_split(seed: int) -> None:
    rng = random.Random(seed)
    lengths = sorted(rng.randint(1, 60) for _ in range(rng.randint(1, 9)))
    max_items, max_tokens, overhead = rng.randint(1, 5), rng.randint(60, 200), rng.uniform(0, 80)
    bounds = partition(lengths, max_items, max_tokens, overhead)
    assert valid(lengths, bounds, max_items, max_tokens)
    assert cost(lengths, bounds, overhead) == pytest.approx(brute_force(lengths, max_items, max_tokens, overhead))


def test_partition_cuts_at_the_jump_and_keeps_short_items_together() -> None:
    lengths = [10] * 30 + [200] * 2
    # one batch would pad 30 short items to 200 tokens; two calls cost one more overhead only
    assert partition(lengths, 32, 16384, overhead=50) == [0, 30, 32]
    # with a huge fixed cost per call, one batch is cheaper
    assert partition(lengths, 32, 16384, overhead=10_000) == [0, 32]


def test_long_tailed_mix_pads_less_than_equal_chunks() -> None:
    rng = random.Random(0)
    lengths = sorted(round(math.exp(rng.uniform(math.log(12), math.log(200)))) for _ in range(256))
    chunks = greedy_bounds(lengths, 32, 16384)
    cut = partition(lengths, 32, 16384, overhead=40)
    assert cost(lengths, cut, 40) < 0.93 * cost(lengths, chunks, 40)  # 0.91 measured


def test_greedy_bounds_respects_items_and_tokens() -> None:
    assert greedy_bounds([5, 5, 5], 2, 100) == [0, 2, 3]
    assert greedy_bounds([10, 60], 8, 100) == [0, 1, 2]  # 2 x 60 padded tokens > 100
    assert greedy_bounds([], 8, 100) == [0]


def _fed(calls: list[tuple[int, int]], seed: int = 0) -> ServiceRate:
    """A ServiceRate fed calls (items, width) whose time follows a known cost with 10% noise:
    2 ms per call + 40 us per padded token + 0.16 us per item x width^2 (the int8 MiniLM here)."""
    rng, rate = random.Random(seed), ServiceRate()
    for n, width in calls:
        seconds = (2e-3 + n * (40e-6 * width + 0.16e-6 * width * width)) * rng.uniform(0.9, 1.1)
        rate.observe(n * width, n, seconds, width)
    return rate


def test_cost_fit_recovers_the_fixed_cost_on_mixed_widths() -> None:
    rng = random.Random(1)
    rate = _fed([(rng.randint(1, 32), rng.randint(12, 200)) for _ in range(300)])
    assert 1e-3 < rate.fixed < 4e-3
    assert rate.per_sq > 0
    assert rate.item_cost(200) / 200 > rate.item_cost(16) / 16  # wide batches cost more per token


def test_cost_fit_with_one_width_falls_back_to_tokens_and_stays_positive() -> None:
    rate = _fed([(32, 16)] * 50)  # no spread at all: nothing but a cost per token can be fitted
    assert rate.fixed == 0
    assert rate.per_sq == 0
    assert rate.per_token == pytest.approx(40e-6 + 0.16e-6 * 16 + 2e-3 / 512, rel=0.15)
    assert rate.work(64, 32) == pytest.approx(2 * 32 * 16 * rate.per_token)


def test_shares_split_a_window_evenly_and_never_below_the_least() -> None:
    assert shares(32, 2, 8) == [0, 16, 32]
    assert shares(33, 2, 8) == [0, 16, 33]
    assert shares(15, 2, 8) == [0, 15]  # two calls of 7 and 8 would be under the least
    assert shares(24, 4, 8) == [0, 8, 16, 24]
    assert shares(5, 1, 8) == [0, 5]
