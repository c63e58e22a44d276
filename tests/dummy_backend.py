"""A deterministic backend for HTTP tests, injected through `create_app(backend_source=...)`
(never a backend kind of the settings): its outputs are fixed functions of each sequence's
token ids, so a test can compute the exact answer from the tokenizer alone, without a model.

For one sequence of token ids `x_0 .. x_{n-1}` (padding excluded by the attention mask):

- classification: `logits = [n / 8, mean(x) / 16]`;
- embedding: `last_hidden_state[t, j] = cos((x_t + 1) * (j + 1) / 7)` for `j < HIDDEN`;
- qa: `start_logits[t] = x_t / 4` and `end_logits[t] = x_{t-1} / 4` (0 at t = 0): the start
  peaks at the token with the largest id, the end one token after it.

Padded positions are zero in every output, so an answer never depends on what it is batched with.
A model folder for it needs only tokenizer.json and manifest.json (`write_folder`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.repository.loading import BackendSource
from inference.backends import OUTPUT_NAMES, TASKS

HIDDEN = 8
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
LABELS = {"0": "negative", "1": "positive"}


class DummyBackend:
    """`inference.backends.Backend` for one task, computed with numpy from the ids."""

    kind = "dummy"
    input_names = INPUT_NAMES

    def __init__(self, task: str) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        self.task = task

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert set(inputs) == set(INPUT_NAMES), sorted(inputs)
        assert all(v.dtype == np.int64 and v.shape == inputs["input_ids"].shape for v in inputs.values())
        ids = inputs["input_ids"].astype(np.float64)
        mask = inputs["attention_mask"].astype(np.float64)
        if self.task == "classification":
            n = mask.sum(axis=1)
            outputs = {"logits": np.stack([n / 8, (ids * mask).sum(axis=1) / n / 16], axis=1)}
        elif self.task == "embedding":
            j = np.arange(1, HIDDEN + 1, dtype=np.float64)
            outputs = {"last_hidden_state": np.cos((ids[..., None] + 1) * j / 7) * mask[..., None]}
        else:
            start = ids * mask / 4
            end = np.zeros_like(start)
            end[:, 1:] = start[:, :-1]
            outputs = {"start_logits": start, "end_logits": end * mask}
        assert tuple(outputs) == OUTPUT_NAMES[self.task]
        return {name: value.astype(np.float32) for name, value in outputs.items()}


def load_dummy(
    model_dir: Path | str, task: str, kind: str, threads: int | None = None,
    graph_optimization: str = "all", spinning: bool = False, device: str = "cpu", torch_thread: bool = False,
    cache_dir: Path | None = None,
) -> DummyBackend:
    """`inference.backends.load_backend`'s signature; every argument but the task is ignored."""
    return DummyBackend(task)


def dummy_source(kinds: tuple[str, ...] = ("onnx",)) -> BackendSource:
    """Serve every model folder on `kinds` (names the settings accept), each with a dummy."""
    return BackendSource(load=load_dummy, kinds=lambda folder: list(kinds))


def write_folder(root: Path, name: str, task: str, role: str = "student", max_length: int = 64) -> Path:
    """`root/name` with the tiny test tokenizer and a manifest: all a dummy-served model needs."""
    from tests.tiny import build_tokenizer

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(folder / "tokenizer.json"))
    manifest = {
        "schema_version": 1, "name": name, "task": task, "role": role, "architecture": "DummyBackend",
        "model_type": "dummy", "layers": 1, "hidden_size": HIDDEN, "params": 0, "max_length": max_length,
        "labels": LABELS if task == "classification" else None,
        **({"pooling": "mean", "normalize": True} if task == "embedding" else {}),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder
