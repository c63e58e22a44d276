"""Start-up faults on a real server: a corrupted ONNX file, a missing tokenizer and a manifest
that disagrees with its weights are each named with the model and its path; `fail` refuses to
start, `skip` serves the rest and /ready names what is missing (without server paths)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.reliability.server import launch, running, wait_ready
from tests.reliability.test_bad_input import assert_clean_error

BROKEN = {
    "squad-student": "model.onnx is corrupted",
    "embed-student": "tokenizer.json is missing",
    "sst2-teacher": "layers disagree: manifest.json says 6, config.json says 2, model.safetensors says 2",
    "embed-teacher": "hidden_size disagree: manifest.json says 64, config.json says 32, model.safetensors says 32",
    "sst2-three-labels": "labels disagree: manifest.json says 3, config.json says 2, model.safetensors says 2",
}


@pytest.fixture(scope="module")
def broken_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sst2-student intact; the others broken: corrupted ONNX, no tokenizer, manifests that
    disagree with config and weights on layers, hidden size and labels."""
    root = tmp_path_factory.mktemp("broken")
    sources = {name: name for name in ("sst2-student", *BROKEN)} | {"sst2-three-labels": "sst2-student"}
    for name, source in sources.items():
        shutil.copytree(model_repo / source, root / name, ignore=shutil.ignore_patterns("model.int8.onnx"))
    onnx = root / "squad-student" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])  # truncated mid-graph
    (root / "embed-student" / "tokenizer.json").unlink()
    for name, change in (("sst2-teacher", {"layers": 6}), ("embed-teacher", {"hidden_size": 64}),
                         ("sst2-three-labels", {"labels": {"0": "negative", "1": "neutral", "2": "positive"}})):
        manifest = root / name / "manifest.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **change}))
    return root


def test_fail_mode_refuses_to_start_naming_model_and_path(broken_repo: Path, tmp_path: Path) -> None:
    server = launch(broken_repo, tmp_path / "server.log", {"DISTILSERVE_ON_MODEL_ERROR": "fail"})
    try:
        code = server.proc.wait(timeout=90)
    except subprocess.TimeoutExpired as exc:
        server.proc.kill()
        raise AssertionError("the server started with broken models") from exc
    logs = server.logs()
    assert code != 0, logs[-2000:]
    assert "Application startup failed" in logs, logs[-2000:]
    for name, problem in BROKEN.items():
        assert f"model {name!r} at {broken_repo / name}: {problem}" in logs, (name, logs[-3000:])


def test_skip_mode_serves_the_rest_and_ready_names_the_missing(broken_repo: Path, tmp_path: Path) -> None:
    """Also a model that passes the checks but that ONNX Runtime rejects at load: an empty graph."""
    root = tmp_path / "models"
    shutil.copytree(broken_repo, root)
    shutil.copytree(broken_repo / "sst2-student", root / "sst2-empty-graph")
    (root / "sst2-empty-graph" / "model.onnx").write_bytes(b"\x08\x07\x3a\x00")  # ir_version 7, empty graph
    server = launch(root, tmp_path / "server.log", {"DISTILSERVE_ON_MODEL_ERROR": "skip"})
    try:
        ready = wait_ready(server, status=503)
        err = assert_clean_error(ready, 503, "not_ready", "models")
        for name, problem in BROKEN.items():
            assert f"{name} ({problem}" in err["message"], err
        assert "sst2-empty-graph (failed to load:" in err["message"], err
        assert str(tmp_path) not in err["message"]
        good = httpx.post(server.url + "/classify", json={"inputs": "good", "model": "sst2-student"})
        assert good.status_code == 200, good.text
        missing = httpx.post(server.url + "/qa", json={"question": "q", "context": "c", "model": "squad-student"})
        assert_clean_error(missing, 404, "model_not_found", "model")
        assert f"model 'sst2-empty-graph' at {root / 'sst2-empty-graph'}" in server.logs()
    finally:
        server.proc.terminate()
        server.proc.wait(30)


def test_a_clean_repository_is_ready_in_fail_mode(model_repo: Path, tmp_path: Path) -> None:
    """The checks pass real exported models (no false alarm on the six tiny ones)."""
    env = {"DISTILSERVE_ON_MODEL_ERROR": "fail", "DISTILSERVE_BACKENDS": '["onnx","onnx-int8"]'}
    with running(model_repo, tmp_path / "server.log", env) as server:
        assert httpx.get(server.url + "/ready").json() == {"status": "ready", "models": 12}
