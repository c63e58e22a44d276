"""The int8 guard: an int8 answer whose best candidate leads the second by less than int8's
rounding can move is read again on the fp32 file, and the fp32 answer is served.

Why: int8 moves a model's scores a little, and where two answers score almost alike it can put
the other one first. On QA models that is 2-4% of spans (no int8 scheme tried kept 99.5%: blocks
of 32 with FFN-down in fp32 still changed 6 of 662 validation spans), on classifiers up to 1% of
labels. Those items are the near ties, and a near tie is visible in the int8 answer itself: the
log-ratio of the best score to the second (`inference.tasks.lead`, which every classification
and QA result carries; a logit gap for softmax classifiers). Reading only them again keeps
int8's speed on the rest. The re-read runs through `inference.pipelines.run_sorted`, the loop
`evaluate` runs every item through; of a QA item, only the windows that can hold the fp32 answer
(`Guard.contenders`). The threshold is calibrated per model file on
its validation split (`training.int8_guard`) and recorded in the manifest beside the file, where
both the service and `evaluate` read it, so a figure measured with `evaluate` is the served one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.pipelines import run_sorted

if TYPE_CHECKING:
    from inference.backends import Backend
    from inference.pipelines import Pipeline

QUANTILE = 0.995  # of how far int8 moves leads: the threshold's floor (`choose_threshold`)
RESOLUTION = 1e-6  # leads are recorded to 6 decimals: a threshold this far above one reads it again
CHUNK = 32  # sequences per fp32 call when many items are read again at once (sorted by length)
Finished = tuple[Any, Sequence[Any], dict[str, Any]]  # (payload, its sequences, its int8 result)
# what an item's result says about the request itself, kept from the int8 result when only some
# of its windows are read again: how much was read, and how many windows it had
_AS_ASKED = ("tokens", "truncated", "windows", "windows_skipped", "window_scores")


@dataclass(frozen=True, slots=True)
class Guard:
    """The fp32 file of an int8 model and the lead under which an int8 answer is read again."""

    fp32: Backend
    threshold: float

    def near_tie(self, result: dict[str, Any]) -> bool:
        return float(result.get("lead", math.inf)) < self.threshold

    def recheck(self, pipeline: Pipeline, pad: int, finished: Sequence[Finished]) -> list[dict[str, Any]]:
        """The items' results, those of near ties replaced by fp32's (marked `rechecked`, with
        the int8 answers they replace as `int8_result`: what the bare int8 file would have said)."""
        results = [result for _, _, result in finished]
        near = [k for k, result in enumerate(results) if self.near_tie(result)]
        reread = [self.contenders(seqs, result) for _, seqs, result in (finished[k] for k in near)]
        rows = run_sorted(pipeline, self.fp32, pad, reread, CHUNK)
        for k, seqs, item_rows in zip(near, reread, rows, strict=True):
            int8 = results[k]
            fp32 = {key: value for key, value in pipeline.finish(finished[k][0], seqs, item_rows).items()
                    if key not in _AS_ASKED}
            results[k] = {**fp32, **{key: int8[key] for key in _AS_ASKED if key in int8}, "rechecked": True,
                          "int8_result": int8["result"]}
        return results

    def contenders(self, seqs: Sequence[Any], result: dict[str, Any]) -> Sequence[Any]:
        """The sequences of a near tie that can hold fp32's answer: for QA, the windows whose best
        span int8 scored within the threshold of the best answer (a window further behind would
        need int8 to have moved a score ratio by more than the threshold, the move the guard is
        calibrated to cover); every sequence where the result has no per-window scores. Why: a
        long context's near tie read again whole cost its int8 call plus a whole fp32 one
        (10,000 characters, 9 windows: 2,239 ms against fp32's 1,254, 2026-12-07)."""
        scores = result.get("window_scores")
        if not scores or len(scores) != len(seqs):
            return seqs
        top = max(scores)
        keep = [seq for seq, score in zip(seqs, scores, strict=True)
                if score > 0 and math.log(top / score) < self.threshold]
        return keep or seqs


def choose_threshold(int8_leads: Sequence[float], fp32_leads: Sequence[float], changed: Sequence[bool],
                     same_pair: Sequence[bool], most: float, quantile: float = QUANTILE) -> tuple[float, float]:
    """(threshold, share of items read again) from a validation run of both files.

    An int8 answer flips when int8 moves the lead by more than the lead itself, so the threshold
    must exceed how far int8 moves leads: the `quantile` of that move over the items where both
    files rank the same two answers first (`same_pair`: |int8 lead - fp32 lead|; where the two
    swapped places, the sum of both leads), and at least every changed item's own lead. A split
    holds few changed items (one of 872 on the SST-2 quick student, against three on dev, all
    three with larger leads); the moves of all its items say more. Only same-pair items measure
    a move: where the second answers differ (common in QA, whose second span is often a sub-span
    of the first) the two leads compare different things. Capped at the lead under which `most`
    of the items fall: past that, the int8 file would run at about fp32's cost. 0 when no item
    moved at all."""
    l8, l32 = np.asarray(int8_leads, dtype=np.float64), np.asarray(fp32_leads, dtype=np.float64)
    flipped, pair = np.asarray(changed, dtype=bool), np.asarray(same_pair, dtype=bool)
    with np.errstate(invalid="ignore"):  # inf - inf: one candidate in both runs, nothing to move
        moves = np.where(flipped, l8 + l32, np.abs(l8 - l32))[pair]
    moves = moves[np.isfinite(moves)]
    if l8.size == 0 or (not flipped.any() and not moves.any()):
        return 0.0, 0.0
    threshold = float(np.quantile(moves, quantile)) if moves.size else 0.0
    if flipped.any():
        threshold = max(threshold, float(l8[flipped].max()) + RESOLUTION)
    cap = float(np.quantile(l8, most, method="lower"))
    threshold = min(threshold, cap) if np.isfinite(cap) else threshold
    return threshold, float(np.mean(l8 < threshold))
