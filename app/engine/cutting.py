"""Where a sorted or first-come run of sequences is cut into model calls: greedily by the caps
(first-come), or at the least total fitted cost (sorted windows that need several calls)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def greedy_bounds(lengths: Sequence[int], max_items: int, max_tokens: int) -> list[int]:
    """Batch boundaries in the given order: a batch closes when one more item would pass the
    item cap or the padded-token cap (items x longest)."""
    bounds, width = [0], 0
    for k, n in enumerate(lengths):
        grown = max(width, n)
        if k > bounds[-1] and (k - bounds[-1] >= max_items or grown * (k - bounds[-1] + 1) > max_tokens):
            bounds.append(k)
            grown = n
        width = grown
    return bounds + [len(lengths)] if lengths else [0]


def shares(n: int, calls: int, least: int) -> list[int]:
    """Boundaries that share `n` sequences out over up to `calls` equal calls of at least
    `least` each: a window that would be one call, run as concurrent calls on idle workers
    (each on its share of the cores) instead of one call on every core, which on a 2-core CPU
    spends more of a call synchronising its threads (fp32 MiniLM, 32 sentences: two calls of 16
    on one thread each 490-510 items/s, one call of 32 on two threads 430-480)."""
    parts = max(1, min(calls, n // max(1, least)))
    return [n * k // parts for k in range(parts + 1)]


def partition(lengths: Sequence[int], max_items: int, max_tokens: int, overhead: float,
              item_cost: Callable[[int], float] = float) -> list[int]:
    """Boundaries that split ascending `lengths` into batches of least total cost, where a batch
    costs `overhead` (a model call's fixed cost) + items x `item_cost(its longest length)`
    (default: the length itself, i.e. padded tokens).

    Equal-size chunks of a sorted window still pad: the last item of each chunk sets its width,
    and in a long-tailed mix one chunk spans 60 to 200 tokens. Cutting where the lengths jump,
    at the price of one more model call when that is cheaper, takes most of the remaining padding
    out. Dynamic programming over cut points: O(items x max_items), about 1 ms for 256 items.
    """
    n = len(lengths)
    best, cut = [0.0] * (n + 1), [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[j - 1]  # the batch (i, j] is as wide as its last, longest item
        lo = min(j - 1, max(0, j - max_items, j - max_tokens // max(1, width)))
        unit = item_cost(width)  # what each of its items costs at that width
        cost, at = min((best[i] - i * unit, i) for i in range(lo, j))
        best[j], cut[j] = cost + j * unit + overhead, at
    bounds, j = [n], n
    while j > 0:
        j = cut[j]
        bounds.append(j)
    return bounds[::-1] if n else [0]
