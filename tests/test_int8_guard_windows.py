"""The int8 guard on a long QA context reads again only the windows that can hold fp32's answer:
those whose best span int8 scored within the threshold of the best answer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends import Backend, load_backend
from inference.guard import Guard
from inference.modelfolder import read_spec
from inference.pipelines import QAItem, make_pipeline, run_sorted, valid_sequences

CONTEXT = " ".join(["the quick brown fox jumps over the lazy dog near the river bank."] * 6
                   + ["a small cat sleeps on the warm mat all day long."] * 6)


class Counting:
    """A backend that counts the sequences it is asked to run."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.sequences = backend, 0

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.sequences += len(inputs["input_ids"])
        return self.backend.forward(inputs)


def _int8_answer(folder: Path, item: QAItem) -> tuple[Any, Any, list, dict[str, Any]]:
    pipeline, pad = make_pipeline(read_spec(folder))
    seqs = list(valid_sequences(pipeline.encode([item])[0]))
    rows = run_sorted(pipeline, load_backend(folder, "qa", "onnx-int8"), pad, [seqs], 32)[0]
    return pipeline, pad, seqs, pipeline.finish(item, seqs, rows)


def test_a_long_near_tie_reads_again_only_its_contending_windows(model_repo: Path) -> None:
    folder = model_repo / "squad-teacher"
    item = QAItem(0, "what sleeps on the mat?", CONTEXT, doc_stride=8)
    pipeline, pad, seqs, int8 = _int8_answer(folder, item)
    scores = int8["window_scores"]
    assert len(seqs) == len(scores) == int8["windows"] > 4  # the test needs a long context
    gaps = sorted(math.log(max(scores) / s) for s in scores if s > 0)
    threshold = (gaps[1] + gaps[2]) / 2  # between the second and third window: two contend
    fp32 = Counting(load_backend(folder, "qa", "onnx"))
    guard = Guard(fp32, threshold)  # type: ignore[arg-type]  # a Backend by duck typing
    contenders = guard.contenders(seqs, {**int8, "lead": 0.0})
    assert len(contenders) == 2

    [served] = guard.recheck(pipeline, pad, [(item, seqs, {**int8, "lead": 0.0})])
    assert fp32.sequences == 2  # only the two contending windows ran in fp32
    assert served["rechecked"] is True
    assert (served["windows"], served["tokens"]) == (int8["windows"], int8["tokens"])  # the request as asked
    assert "windows_skipped" not in served
    only = run_sorted(pipeline, fp32.backend, pad, [list(contenders)], 32)[0]
    assert served["result"] == pipeline.finish(item, contenders, only)["result"]  # fp32's answer over them


def test_without_window_scores_every_window_is_read_again(model_repo: Path) -> None:
    """A null answer competes with the lowest no-answer score over all windows, so an item that
    allows it carries no per-window scores and a near tie is read again whole."""
    folder = model_repo / "squad-teacher"
    item = QAItem(0, "what sleeps on the mat?", CONTEXT, doc_stride=8, handle_impossible_answer=True)
    _, _, seqs, int8 = _int8_answer(folder, item)
    assert "window_scores" not in int8
    assert list(Guard(load_backend(folder, "qa", "onnx"), 1e-3).contenders(seqs, int8)) == list(seqs)
