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


def test_answers_are_whole_words_without_edge_punctuation() -> None:
    from inference.tasks.qa import answer_bounds

    context = "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50."
    def bounds(piece: str, cut_left: int = 0, cut_right: int = 0) -> str:
        start = context.index(piece)
        begin, finish = answer_bounds(context, start + cut_left, start + len(piece) - cut_right)
        return context[begin:finish]

    assert bounds("Broncos", cut_left=3) == "Broncos"  # a sub-word start widens to the word
    assert bounds("Carolina", cut_right=4) == "Carolina"  # so does a sub-word end
    assert bounds("50.") == "50"  # the sentence's full stop is not part of the answer
    assert bounds(" 24-10 ") == "24-10"  # spaces trimmed, the inner hyphen kept
    assert bounds("Denver Broncos") == "Denver Broncos"  # a clean span is left as it is


def test_decode_never_returns_one_word_twice(model_repo) -> None:
    tokenizer = load_tokenizer(model_repo / "squad-student")
    context = "unbelievably long words stay whole"
    windows = encode_qa(tokenizer, "what stays?", context, max_length=48, doc_stride=8)
    w = windows[0]
    first_word = [i for i, o in enumerate(w.offsets) if o and o[1] <= len("unbelievably")]
    start, end = np.full(len(w.ids), -5.0), np.full(len(w.ids), -5.0)
    for i in first_word:  # every sub-word of the first word is an equally good start and end
        start[i] = end[i] = 5.0
    answers = decode_qa(windows, [start], [end], context, top_k=3)
    spans = [(a["start"], a["end"]) for a in answers]
    assert len(spans) == len(set(spans))
    assert answers[0]["answer"] == "unbelievably"
