"""Reference numbers computed directly from a backend (no HTTP, no batcher), one input at a
time, to check what the service returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.backends import load_backend
from inference.tasks import classify as cls
from inference.tasks import embed as emb
from inference.tasks import load_tokenizer, pad_batch


def logits(model_dir: Path, text: str | tuple[str, str], kind: str = "onnx", max_length: int = 64) -> np.ndarray:
    tokenizer = load_tokenizer(model_dir, max_length)
    inputs = pad_batch(cls.encode(tokenizer, [text], max_length))
    return load_backend(model_dir, "classification", kind, threads=1).forward(inputs)["logits"][0]


def mean_embedding(model_dir: Path, text: str, kind: str = "onnx", max_length: int = 64) -> np.ndarray:
    tokenizer = load_tokenizer(model_dir, max_length)
    inputs = pad_batch(emb.encode(tokenizer, [text], max_length))
    hidden = load_backend(model_dir, "embedding", kind, threads=1).forward(inputs)["last_hidden_state"]
    return emb.pool(hidden, inputs["attention_mask"], "mean")[0]
