"""Pure, HTTP-free task pipelines (pre-process / core / post-process), shared by the service's
batcher and by training's `evaluate`, so that evaluated numbers are the served numbers.

Tokenization uses the `tokenizers` library only (never transformers): the ONNX path needs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

_PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")


@dataclass(slots=True)
class Encoded:
    """One model input sequence, unpadded."""

    ids: list[int]
    type_ids: list[int]
    truncated: bool = False

    @property
    def tokens(self) -> int:
        return len(self.ids)


def load_tokenizer(model_dir: Path | str, max_length: int | None = None) -> Tokenizer:
    """Load `tokenizer.json` with padding off (the batcher pads per batch) and truncation at
    `max_length` (None: off, as QA windowing needs the whole context)."""
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    configure(tokenizer, max_length)
    return tokenizer


def configure(tokenizer: Tokenizer, max_length: int | None) -> None:
    """Idempotent: files often ship fixed padding/truncation that would defeat dynamic padding."""
    if tokenizer.padding is not None:
        tokenizer.no_padding()
    current = tokenizer.truncation
    if max_length is None:
        if current is not None:
            tokenizer.no_truncation()
    elif current is None or current.get("max_length") != max_length or current.get("stride"):
        tokenizer.enable_truncation(max_length)


def pad_id(tokenizer: Tokenizer) -> int:
    """The id of the padding token (0 if the vocabulary has none; masked anyway)."""
    for token in _PAD_TOKENS:
        tid = tokenizer.token_to_id(token)
        if tid is not None:
            return int(tid)
    return 0


class Sequenced(Protocol):
    """What padding reads of a model input: an `Encoded`, or a QA window."""

    @property
    def ids(self) -> list[int]: ...
    @property
    def type_ids(self) -> list[int]: ...


def pad_batch(seqs: Sequence[Sequenced], pad: int = 0) -> dict[str, np.ndarray]:
    """Right-pad to the longest sequence: int64 input_ids, attention_mask, token_type_ids."""
    width = max(len(s.ids) for s in seqs)
    ids = np.full((len(seqs), width), pad, dtype=np.int64)
    types = np.zeros((len(seqs), width), dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        n = len(seq.ids)
        ids[row, :n] = seq.ids
        types[row, :n] = seq.type_ids
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def lead(scores: Sequence[float], probabilities: bool = True) -> float:
    """How far the best of `scores` (sorted best first) leads the second: log(best / second) for
    probabilities, the plain difference for raw scores; infinite with a single candidate."""
    if len(scores) < 2:
        return math.inf
    best, second = float(scores[0]), float(scores[1])
    if not probabilities:
        return best - second
    if best <= 0.0:
        return 0.0
    return math.inf if second <= 0.0 else math.log(best / second)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64, returned as float64 for exact score tests."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    probs: np.ndarray = e / e.sum(axis=axis, keepdims=True)
    return probs
