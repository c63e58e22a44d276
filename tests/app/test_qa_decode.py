"""The pure QA functions that training's evaluate shares with the service: windows and spans."""

from __future__ import annotations

import numpy as np

from inference.tasks import load_tokenizer
from inference.tasks.qa import decode_qa, encode_qa
from tests.app.test_qa import LONG_CONTEXT


def test_decode_picks_the_best_span_and_maps_characters(model_repo) -> None:
    tokenizer = load_tokenizer(model_repo / "squad-student")
    context = "the quick brown fox jumps over the lazy dog"
    windows = encode_qa(tokenizer, "what jumps?", context, max_length=48, doc_stride=8)
    assert len(windows) == 1
    w = windows[0]
    fox = next(i for i, o in enumerate(w.offsets) if o and context[o[0] : o[1]] == "fox")
    start, end = np.full(len(w.ids), -5.0), np.full(len(w.ids), -5.0)
    start[fox - 1], end[fox] = 8.0, 8.0  # "brown fox"
    start[1] = end[1] = 50.0  # a question token: must never be chosen
    best = decode_qa(windows, [start], [end], context, top_k=1)[0]
    assert best["answer"] == "brown fox"
    assert context[best["start"] : best["end"]] == "brown fox"
    assert best["score"] > 0.9


def test_windows_overlap_by_doc_stride(model_repo) -> None:
    tokenizer = load_tokenizer(model_repo / "squad-student")
    windows = encode_qa(tokenizer, "what city?", LONG_CONTEXT, max_length=48, doc_stride=10)
    assert all(w.tokens <= 48 for w in windows)
    first = [o for o in windows[0].offsets if o]
    second = [o for o in windows[1].offsets if o]
    assert first[-10:] == second[:10]
    covered = {o for w in windows for o in w.offsets if o}
    assert max(e for _, e in covered) == len(LONG_CONTEXT)
