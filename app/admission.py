"""What a model call costs on this machine, measured as it serves: the cost model behind
admission by estimated wait and behind the batcher's cost-aware cut.

The batcher turns a request away (429) when the work queued ahead of it, at the measured rate,
would keep it waiting past the admission budget, and it splits a sorted window into the model
calls that this model says are cheapest."""

from __future__ import annotations

import math

import numpy as np

_ALPHA = 0.1  # weight of the newest model call in the fit (about the last 10-20 calls count)
# Feature scales: padded tokens ~1e3-1e4 and items x width^2 ~1e5-1e7 per call; scaling keeps
# the 3x3 normal equations well conditioned.
_SCALE = np.array([1.0, 1e-3, 1e-6])


class ServiceRate:
    """seconds ~ fixed + per_token x padded tokens + per_sq x items x width^2, fitted by
    exponentially weighted least squares over recent calls (so it follows the machine's load).

    The squared term is attention, whose cost per token grows with the width: on the int8
    MiniLM here a token costs 48 us in a batch 16 wide and 70 us in one 200 wide. Without that
    term a fit over mixed lengths bends the line and pushes the fixed cost below zero, which
    is the one figure the batcher's cut needs. With uniform widths the squared term cannot be
    told from the linear one and the fit falls back to fixed + per_token; with too little spread
    in sizes, or a negative coefficient, the whole cost goes on the tokens, which over- rather
    than under-states a big queue. Admission needs a cost per item, not per call: on a CPU a
    full batch takes many times longer than one item."""

    def __init__(self) -> None:
        self.calls = 0
        self._m = np.zeros((3, 3))  # weighted mean of f f^T, f = scaled [1, tokens, items x width^2]
        self._v = np.zeros(3)       # weighted mean of f x seconds
        self.fixed = self.per_token = self.per_sq = 0.0
        self.tokens_per_item = self.sq_per_item = 0.0

    def observe(self, tokens: int, items: int, seconds: float, width: int | None = None) -> None:
        """One model call of `items` sequences padded to `width` (default tokens / items), with
        its share of tokenization and post-processing."""
        w = max(_ALPHA, 1.0 / (self.calls + 1))  # plain mean over the first calls
        self.calls += 1
        width = width or tokens / max(1, items)
        # relative errors: a call's time varies by a share of itself (load, caches), so each
        # row is divided by its seconds; otherwise the big calls' noise swamps the fixed cost
        f = np.array([1.0, tokens, items * width * width]) * _SCALE / max(seconds, 1e-6)
        self._m += w * (np.outer(f, f) - self._m)
        self._v += w * (f - self._v)
        self.tokens_per_item += w * (tokens / items - self.tokens_per_item)
        self.sq_per_item += w * (width * width - self.sq_per_item)
        self._fit()

    def _fit(self) -> None:
        """The fullest model whose coefficients come out well determined and non-negative."""
        for used in ((0, 1, 2), (0, 1)):
            coef = _solve(self._m, self._v, used)
            if coef is not None:
                self.fixed, self.per_token, self.per_sq = coef
                return
        self.fixed, self.per_sq = 0.0, 0.0  # tokens alone: the least-squares slope through 0
        self.per_token = self._v[1] / self._m[1, 1] * _SCALE[1] if self._m[1, 1] > 0 else 0.0

    def item_cost(self, width: int) -> float:
        """Seconds one sequence adds to a model call whose batch is `width` tokens wide."""
        return self.per_token * width + self.per_sq * width * width

    def work(self, items: int, batch: int) -> float:
        """Seconds to compute `items` queued items in batches of `batch`."""
        per_item = self.per_token * self.tokens_per_item + self.per_sq * self.sq_per_item
        return math.ceil(items / batch) * self.fixed + items * per_item

    @property
    def solo(self) -> float:
        """Seconds for one typical item alone: what a request on an idle service waits."""
        return self.fixed + self.per_token * self.tokens_per_item + self.per_sq * self.sq_per_item


def _solve(m: np.ndarray, v: np.ndarray, used: tuple[int, ...]) -> tuple[float, float, float] | None:
    """Least squares on the features `used`; None when they are (nearly) collinear or a
    coefficient is negative."""
    sub = m[np.ix_(used, used)]
    if np.linalg.cond(sub) > 1e8:
        return None
    coef = np.linalg.solve(sub, v[list(used)])
    if (coef < 0).any():
        return None
    full = np.zeros(3)
    full[list(used)] = coef * _SCALE[list(used)]
    return float(full[0]), float(full[1]), float(full[2])
