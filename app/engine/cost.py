"""What a model call costs on this machine, measured as it serves: the cost model behind
admission by estimated wait and behind the batcher's cost-aware cut.

The batcher turns a request away (429) when the work queued ahead of it, at the measured rate,
would keep it waiting past the admission budget, and it splits a sorted window into the model
calls that this model says are cheapest."""

from __future__ import annotations

import math

_ALPHA = 0.1  # weight of the newest model call in the fit (about the last 10-20 calls count)
# Feature scales: padded tokens ~1e3-1e4 and items x width^2 ~1e5-1e7 per call; scaling keeps
# the 3x3 normal equations well conditioned. Plain Python on purpose: this runs once per model
# call in the worker thread, and numpy's LAPACK (OpenBLAS) threads spin on the cores that ONNX
# Runtime needs (measured: +2.5 ms on a one-client request).
_SCALE = (1.0, 1e-3, 1e-6)
_COLLINEAR = 1e-9  # det / product of the diagonal below this: the features cannot be told apart


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
        self._m = [[0.0] * 3 for _ in range(3)]  # weighted mean of f f^T, f = scaled [1, tokens, items x width^2]
        self._v = [0.0] * 3                      # weighted mean of f (relative errors: target 1)
        self.fixed = self.per_token = self.per_sq = 0.0
        self.tokens_per_item = self.sq_per_item = 0.0

    def observe(self, tokens: int, items: int, seconds: float, width: int | None = None) -> None:
        """One model call of `items` sequences padded to `width` (default tokens / items), with
        its share of tokenization and post-processing."""
        w = max(_ALPHA, 1.0 / (self.calls + 1))  # plain mean over the first calls
        self.calls += 1
        wide = float(width or tokens / max(1, items))
        # relative errors: a call's time varies by a share of itself (load, caches), so each
        # row is divided by its seconds; otherwise the big calls' noise swamps the fixed cost
        raw = (1.0, float(tokens), items * wide * wide)
        f = [x * k / max(seconds, 1e-6) for x, k in zip(raw, _SCALE, strict=False)]
        for r in range(3):
            self._v[r] += w * (f[r] - self._v[r])
            for c in range(3):
                self._m[r][c] += w * (f[r] * f[c] - self._m[r][c])
        self.tokens_per_item += w * (tokens / items - self.tokens_per_item)
        self.sq_per_item += w * (wide * wide - self.sq_per_item)
        self._fit()

    def _fit(self) -> None:
        """The fullest model whose coefficients come out well determined and non-negative."""
        for used in ((0, 1, 2), (0, 1)):
            coef = _solve(self._m, self._v, used)
            if coef is not None:
                self.fixed, self.per_token, self.per_sq = coef
                return
        self.fixed, self.per_sq = 0.0, 0.0  # tokens alone: the least-squares slope through 0
        self.per_token = self._v[1] / self._m[1][1] * _SCALE[1] if self._m[1][1] > 0 else 0.0

    def item_cost(self, width: int) -> float:
        """Seconds one sequence adds to a model call whose batch is `width` tokens wide."""
        return self.per_token * width + self.per_sq * width * width

    @property
    def per_item(self) -> float:
        """Seconds a typical item (its recent tokens and squared width) adds to a model call."""
        return self.per_token * self.tokens_per_item + self.per_sq * self.sq_per_item

    def work(self, items: int, batch: int) -> float:
        """Seconds to compute `items` queued items in batches of `batch`."""
        return math.ceil(items / batch) * self.fixed + items * self.per_item

    @property
    def solo(self) -> float:
        """Seconds for one typical item alone: what a request on an idle service waits."""
        return self.fixed + self.per_item


def _solve(m: list[list[float]], v: list[float], used: tuple[int, ...]) -> tuple[float, float, float] | None:
    """Least squares on the features `used` (Gaussian elimination on the normal equations);
    None when they are (nearly) collinear or a coefficient comes out negative."""
    a = [[m[r][c] for c in used] + [v[r]] for r in used]
    n, scale = len(used), math.prod(m[r][r] for r in used)
    det = 1.0
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if a[col][col] == 0:
            return None
        det *= abs(a[col][col])
        for r in range(col + 1, n):
            factor = a[r][col] / a[col][col]
            a[r] = [x - factor * y for x, y in zip(a[r], a[col], strict=False)]
    if scale <= 0 or det <= _COLLINEAR * scale:  # det / prod(diagonal) is in (0, 1] for these moments
        return None
    coef = [0.0] * n
    for r in reversed(range(n)):
        coef[r] = (a[r][n] - sum(a[r][c] * coef[c] for c in range(r + 1, n))) / a[r][r]
    if min(coef) < 0:
        return None
    full = [0.0, 0.0, 0.0]
    for k, i in enumerate(used):
        full[i] = coef[k] * _SCALE[i]
    return full[0], full[1], full[2]
