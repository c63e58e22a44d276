"""The torch backends as the service and `evaluate` call them: bf16 on CPU runs a large batch
in slices (BF16_CPU_CALL_TOKENS) and must give each row the answer it gets alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.backends import load_backend
from inference.backends.torch import BF16_CPU_CALL_TOKENS
from tests.tiny import build_model_dir


def test_bf16_batch_in_slices_gives_each_row_its_own_answer(tmp_path: Path) -> None:
    folder = build_model_dir(tmp_path, "embedding", "teacher", int8=False)
    rows, width = 40, 48  # 1,920 padded tokens: four slices of 10 rows
    assert rows * width > BF16_CPU_CALL_TOKENS
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 90, size=(rows, width))
    mask = np.ones_like(ids)
    mask[::3, 30:] = 0  # some rows padded
    inputs = {"input_ids": ids, "attention_mask": mask}
    bf16 = load_backend(folder, "embedding", "torch-bf16", threads=1, torch_thread=True)
    calls: list[int] = []
    bf16.model.register_forward_hook(lambda module, args, out: calls.append(1))  # type: ignore[attr-defined]
    whole = bf16.forward(inputs)["last_hidden_state"]
    assert len(calls) == 4
    alone = np.concatenate([bf16.forward({k: v[i : i + 1] for k, v in inputs.items()})["last_hidden_state"]
                            for i in range(rows)])
    assert whole.shape == (rows, width, 32)
    np.testing.assert_allclose(whole, alone, atol=1e-5)
    fp32 = load_backend(folder, "embedding", "torch", threads=1).forward(inputs)["last_hidden_state"]
    assert 0 < np.abs(whole - fp32).max() < 0.05  # bf16 products, close to fp32
