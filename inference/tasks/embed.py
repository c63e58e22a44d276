"""Sentence embeddings: pool token states over the attention mask, optionally L2-normalise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from inference.tasks import Encoded, configure

POOLINGS = ("mean", "cls")


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> list[Encoded]:
    """Encode texts truncated at `max_length`; `truncated` marks inputs that lost tokens."""
    configure(tokenizer, max_length)
    return [Encoded(e.ids, e.type_ids, bool(e.overflowing)) for e in tokenizer.encode_batch(list(texts))]


def pool(last_hidden_state: np.ndarray, attention_mask: np.ndarray, mode: str = "mean") -> np.ndarray:
    """`[batch, seq, hidden]` → `[batch, hidden]` float32. Mean pooling weights by the mask
    so padding never leaks into a sentence's vector (batched == alone)."""
    if mode == "cls":
        return np.ascontiguousarray(last_hidden_state[:, 0, :], dtype=np.float32)
    if mode != "mean":
        raise ValueError(f"pooling {mode!r} not in {POOLINGS}")
    mask = attention_mask[..., None].astype(np.float32)
    summed = (last_hidden_state * mask).sum(axis=1)
    pooled: np.ndarray = (summed / np.clip(mask.sum(axis=1), 1e-9, None)).astype(np.float32)
    return pooled


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero vectors stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: np.ndarray = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
    return unit
