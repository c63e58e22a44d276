"""A stopped training run resumes where it stopped and ends with the weights of a run that was
never stopped (through the CLI: `train`, stopped by SIGINT, run again)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.polling import wait_for
from tests.training.conftest import TINY
from tests.training.test_cli import REPO, cli, manifest

LONG = [item for item in TINY if not item.startswith("teacher_epochs=")] + ["teacher_epochs=30", "precision=fp32"]


def train_args(data: Path, base: Path, out: Path, *extra: str) -> list[str]:
    sets = [arg for item in [*LONG, *extra] for arg in ("--set", item)]
    return ["train", "--task", "classification", "--data", str(data), "--base", str(base), "--out", str(out), *sets]


def stop_after_first_checkpoint(args: list[str], out: Path, cache: Path) -> subprocess.CompletedProcess:
    """Start training, wait for its first loop checkpoint, then SIGINT it as Ctrl-C would."""
    env = {**os.environ, "DISTILSERVE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO),
           "DISTILSERVE_CHECKPOINT_S": "0.3"}
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (out / ".checkpoint" / "teacher-loop.pt").is_file() or proc.poll() is not None,
                 timeout=120, what="the first training checkpoint")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_stopped_training_resumes_to_the_same_weights(tmp_path: Path, tiny_bases: dict, tiny_data: dict,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data, base = tiny_data["sst2_train"], tiny_bases["bert"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    monkeypatch.setenv("DISTILSERVE_CHECKPOINT_S", "0")  # the reference run keeps no checkpoint
    cli(*train_args(data, base, whole), cache=tmp_path)
    assert not (whole / ".checkpoint").exists()
    curve_of_the_whole_run(whole, tiny_data["sst2_dev"], tmp_path)

    first = stop_after_first_checkpoint(train_args(data, base, stopped), stopped, tmp_path)
    assert first.returncode != 0, "the run finished before it could be stopped"
    assert "stopped by SIGINT" in first.stderr
    assert "run the same command again to resume" in first.stderr
    assert {p.name for p in (stopped / ".checkpoint").iterdir()} == {"teacher-batches.pt", "teacher-loop.pt"}

    monkeypatch.setenv("DISTILSERVE_CHECKPOINT_S", "300")
    again = cli(*train_args(data, base, stopped), cache=tmp_path)
    assert "prepared batches restored" in again.stderr
    assert "resumed at step" in again.stderr
    resumed_at = manifest(stopped)["training"]["resumed_at"]
    steps = manifest(whole)["training"]["steps"]
    assert len(resumed_at) == 1
    assert 0 < resumed_at[0] < steps == manifest(stopped)["training"]["steps"]
    assert not (stopped / ".checkpoint").exists(), "the checkpoint goes once the model is saved"
    a, b = load_file(whole / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name


def test_a_checkpoint_of_another_recipe_is_not_resumed(tmp_path: Path, tiny_bases: dict, tiny_data: dict) -> None:
    data, base, out = tiny_data["sst2_train"], tiny_bases["bert"], tmp_path / "m"
    first = stop_after_first_checkpoint(train_args(data, base, out), out, tmp_path)
    assert first.returncode != 0
    other = cli(*train_args(data, base, out, "teacher_lr=1e-3"), cache=tmp_path)
    assert "made for another recipe, data or teacher; ignored" in other.stderr
    assert manifest(out)["training"]["resumed_at"] == []


def curve_of_the_whole_run(model: Path, dev: Path, cache: Path) -> None:
    """`curve` evaluates the snapshots kept at 1/4, 2/4, 3/4 of the steps and the model itself."""
    done = cli("curve", str(model), "--data", str(dev), cache=cache)
    curve = manifest(model)["curve"]
    steps = manifest(model)["training"]["steps"]
    assert [p["step"] for p in curve["points"]] == [round(steps * i / 4) for i in (1, 2, 3)] + [steps]
    assert (curve["set"].endswith("-dev"), curve["metric"], curve["rows"]) == (True, "accuracy", 24)
    minutes = [p["minutes"] for p in curve["points"]]
    assert minutes == sorted(minutes)
    assert all(0 <= p["value"] <= 1 and p["interval"]["low"] <= p["value"] <= p["interval"]["high"]
               for p in curve["points"])
    final = manifest(model)["training"]
    assert curve["points"][-1]["minutes"] == round(final["seconds"] / 60, 1)
    assert done.stdout.count("[") == 4  # one printed row per point, with its interval
