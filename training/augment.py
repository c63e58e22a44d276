"""More text for the student than the teacher trained on: cropped SQuAD contexts.

Why: the QA student distils on the 6,348 questions of 26 articles, and a distilled student gains
from more inputs labelled by its teacher (TinyBERT's augmentation; DistilBERT's "more text than
the teacher saw"). A crop keeps the question, its gold answer and the sentence holding it, and
leaves out a random half of the other sentences: the teacher's soft targets over the distractors
that remain differ from the full context's, and the gold span moves with the text before it.
Torch-free: it only rewrites examples.
"""
from __future__ import annotations

import random
import re
from dataclasses import replace

from training.data import QAExample

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")  # a cut after ., ! or ? and the spaces that follow


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text``; each keeps its trailing spaces, so the
    spans tile the text and any subset of them, joined, reads as prose."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    return [(a, b) for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if b > a]


def crop(example: QAExample, rng: random.Random, tag: str) -> QAExample | None:
    """The example with each sentence that does not touch the gold answer left out with
    probability 1/2 (at least one), the answer's offset moved; None when every sentence touches it."""
    first, last = example.answer_start, example.answer_start + len(example.answers[0])
    spans = sentences(example.context)
    free = [i for i, (a, b) in enumerate(spans) if b <= first or a >= last]
    if not free:
        return None
    dropped = {i for i in free if rng.random() < 0.5} or {rng.choice(free)}
    context = "".join(example.context[a:b] for i, (a, b) in enumerate(spans) if i not in dropped)
    start = first - sum(b - a for i, (a, b) in enumerate(spans) if i in dropped and b <= first)
    assert context[start:start + len(example.answers[0])] == example.answers[0], example.qid  # the span moved intact
    return replace(example, qid=f"{example.qid}#{tag}", context=context, answer_start=start)


def crops(examples: list[QAExample], per_example: int, seed: int) -> list[QAExample]:
    """``per_example`` crops of each example (fewer for a context of one sentence), seeded."""
    rng = random.Random(seed)
    made = (crop(e, rng, f"crop{k}") for k in range(per_example) for e in examples)
    return [c for c in made if c is not None]
