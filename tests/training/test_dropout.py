"""The recipe's `teacher_dropout` / `student_dropout` change how a model trains, not the model it saves
(through the CLI)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.training.conftest import TINY
from tests.training.test_cli import cli, manifest


def train(data: Path, base: Path, out: Path, cache: Path, *extra: str) -> dict[str, torch.Tensor]:
    sets = [arg for item in [*TINY, "precision=fp32", *extra] for arg in ("--set", item)]
    cli("train", "--task", "classification", "--data", str(data), "--base", str(base), "--out", str(out), *sets,
        cache=cache)
    return load_file(str(out / "model.safetensors"))


def test_dropout_off_trains_other_weights_and_saves_the_base_config(tmp_path: Path, tiny_bases: dict,
                                                                   tiny_data: dict) -> None:
    data, base = tiny_data["sst2_train"], tiny_bases["bert"]
    default = train(data, base, tmp_path / "default", tmp_path)
    again = train(data, base, tmp_path / "again", tmp_path)
    off = train(data, base, tmp_path / "off", tmp_path, "teacher_dropout=0")

    trained = [k for k in default if "classifier" in k or "layer.3." in k]  # the top 2 of 4 layers + head
    assert trained
    assert all(torch.equal(default[k], again[k]) for k in default)  # seeded: a rerun repeats
    assert any(not torch.equal(default[k], off[k]) for k in trained)  # no dropout masks: another run
    assert all(torch.equal(default[k], off[k]) for k in default if "layer.0." in k)  # frozen layers stay

    config = json.loads((tmp_path / "off" / "config.json").read_text())
    base_config = json.loads((base / "config.json").read_text())
    assert config["hidden_dropout_prob"] == base_config["hidden_dropout_prob"] == 0.1  # served model unchanged
    assert manifest(tmp_path / "off")["recipe"]["teacher_dropout"] == 0
    assert manifest(tmp_path / "default")["recipe"]["teacher_dropout"] is None


def test_sixteen_bit_masks_drop_at_the_rate_and_backward_uses_the_same_mask() -> None:
    from training.dropout import sixteen_bit_dropout

    torch.manual_seed(0)
    x = torch.ones(64, 12, 128, 128, requires_grad=True)  # 12.6 M elements: the rate to about +-0.0003
    y = sixteen_bit_dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.001
    assert abs(y.mean().item() - 1.0) < 0.002  # inverted dropout keeps the expectation
    assert torch.allclose(y[y != 0], torch.tensor(65536 / (65536 - 6554)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx = mask * scale, the forward's own mask
    blocks = (y.detach() == 0).float().view(-1, 4).mean(0)  # the four 16-bit lanes of each 64-bit draw
    assert all(abs(b - 0.1) < 0.002 for b in blocks.tolist())
