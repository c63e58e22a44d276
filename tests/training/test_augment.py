"""Cropped SQuAD contexts for the student (training.augment): the gold answer moves intact."""
from __future__ import annotations

import random

from training.augment import crop, crops, sentences
from training.data import QAExample

CONTEXT = ("Super Bowl 50 was an American football game. It was played on February 7, 2016, at Levi's "
           "Stadium. The Denver Broncos won. As this was the 50th Super Bowl, the league emphasized the "
           "golden anniversary.")


def example(answer: str) -> QAExample:
    return QAExample("q1", "Who won Super Bowl 50?", CONTEXT, [answer], CONTEXT.index(answer), 0)


def test_sentences_tile_the_text() -> None:
    spans = sentences(CONTEXT)
    assert [CONTEXT[a:b] for a, b in spans][2] == "The Denver Broncos won. "
    assert "".join(CONTEXT[a:b] for a, b in spans) == CONTEXT
    assert len(spans) == 4


def test_a_crop_keeps_the_answer_sentence_and_moves_the_span() -> None:
    for seed in range(20):
        made = crop(example("Denver Broncos"), random.Random(seed), "crop0")
        assert made is not None
        assert made.qid == "q1#crop0"
        assert made.context[made.answer_start:made.answer_start + 14] == "Denver Broncos"
        assert "The Denver Broncos won." in made.context
        assert len(made.context) < len(CONTEXT)


def test_one_sentence_contexts_give_no_crop() -> None:
    lone = QAExample("q2", "Who won?", "The Denver Broncos won.", ["Denver Broncos"], 4, 0)
    assert crops([lone, example("golden anniversary")], 2, seed=0)[0].qid == "q1#crop0"
    assert len(crops([lone, example("golden anniversary")], 2, seed=0)) == 2
