"""Sequence classification: encode text / text pairs, turn logits into HF-pipeline label scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from inference.tasks import Encoded, configure, softmax

TextInput = str | tuple[str, str] | list[str]


class InputTooLong(ValueError):
    """An input exceeds the model window and the caller asked not to truncate."""

    def __init__(self, index: int, max_length: int) -> None:
        super().__init__(f"input {index} has more than {max_length} tokens and truncate is false")
        self.index, self.max_length = index, max_length


def encode(tokenizer: Tokenizer, inputs: Sequence[TextInput], max_length: int) -> list[Encoded]:
    """Encode texts or (text, text_pair) with longest-first truncation at `max_length`.

    `truncated` is true when the tokenizer had to cut tokens (it reports them as overflow).
    """
    configure(tokenizer, max_length)
    batch = [tuple(x) if isinstance(x, list) else x for x in inputs]
    encodings = tokenizer.encode_batch(batch)
    return [Encoded(e.ids, e.type_ids, bool(e.overflowing)) for e in encodings]


def scores(logits: np.ndarray, function: str = "softmax") -> np.ndarray:
    """Row-wise probabilities: softmax for single-label heads, sigmoid for one-logit or
    multi-label heads (what the HF text-classification pipeline applies)."""
    logits = np.asarray(logits, dtype=np.float64)
    if function == "sigmoid":
        sigmoid: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
        return sigmoid
    if function == "none":
        return logits
    return softmax(logits)


def score_function(num_labels: int, problem_type: str | None) -> str:
    """Pick the HF pipeline's default function from the head's shape and problem type."""
    if num_labels == 1 or problem_type == "multi_label_classification":
        return "sigmoid"
    return "softmax"


def postprocess(
    logits: np.ndarray,
    id2label: dict[int, str],
    top_k: int | None = 1,
    function: str = "softmax",
) -> list[dict[str, float | str]]:
    """One input's logits → `[{"label", "score"}]` best first; `top_k=None` gives all labels."""
    probs = scores(np.asarray(logits).reshape(-1), function)
    order = np.argsort(-probs, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [{"label": id2label.get(int(i), f"LABEL_{int(i)}"), "score": float(probs[i])} for i in order]
