"""Admission by estimated wait: what a model call costs on this machine, measured as it serves.

The batcher turns a request away (429) when the work queued ahead of it, at the measured rate,
would keep it waiting past the admission budget; this module holds the cost model."""

from __future__ import annotations

import math

_ALPHA = 0.1  # weight of the newest model call in the fit (about the last 10-20 calls count)


class ServiceRate:
    """What a model call costs here: seconds ~ fixed + per_token x padded tokens, fitted by
    exponentially weighted least squares over recent calls (so it follows the machine's load),
    plus the padded tokens an item brings. Admission needs a cost per item, not per call: on a
    CPU a full batch takes many times longer than one item, so an item count says little about
    how long the queue ahead will take."""

    def __init__(self) -> None:
        self.calls = 0
        self._x = self._y = self._xx = self._xy = 0.0
        self.fixed, self.per_token, self.tokens_per_item = 0.0, 0.0, 0.0

    def observe(self, tokens: int, items: int, seconds: float) -> None:
        """One model call (with its share of tokenization and post-processing)."""
        w = max(_ALPHA, 1.0 / (self.calls + 1))  # plain mean over the first calls
        self.calls += 1
        x = float(tokens)
        self._x += w * (x - self._x)
        self._y += w * (seconds - self._y)
        self._xx += w * (x * x - self._xx)
        self._xy += w * (x * seconds - self._xy)
        self.tokens_per_item += w * (tokens / items - self.tokens_per_item)
        self._fit()

    def _fit(self) -> None:
        """Slope and intercept; with too little spread in sizes (or a fit that goes negative)
        the whole cost is put on the tokens, which over- rather than under-states big queues."""
        mx, my = self._x, self._y
        var = self._xx - mx * mx
        slope = (self._xy - mx * my) / var if var > (0.05 * mx) ** 2 else -1.0
        if slope < 0 or my - slope * mx < 0:
            self.fixed, self.per_token = 0.0, my / mx if mx > 0 else 0.0
        else:
            self.fixed, self.per_token = my - slope * mx, slope

    def work(self, items: int, batch: int) -> float:
        """Seconds to compute `items` queued items in batches of `batch`."""
        return math.ceil(items / batch) * self.fixed + items * self.tokens_per_item * self.per_token

    @property
    def solo(self) -> float:
        """Seconds for one typical item alone: what a request on an idle service waits."""
        return self.fixed + self.tokens_per_item * self.per_token
