"""The OpenVINO backends over HTTP: the same ONNX files on another engine give the fp32 file's
answers (`openvino`) and answers close to them (`openvino-int8`, `openvino-bf16`); the int8 guard
reads int8's near ties again on OpenVINO's fp32 session; without OpenVINO installed the kind is
refused with the extra to install."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inference.agreement import row_cosines
from tests.app.guarded import guarded_copy
from tests.conftest import serve
from tests.scrape import delta, parse

on_the_session_loop = pytest.mark.asyncio(loop_scope="session")

TEXTS = ["a good film", "the worst movie of the year, really boring", "funny story", "dull", "a fine cast"]
QA = {"question": "who jumps over the dog?", "context": "the quick brown fox jumps over the lazy dog", "top_k": 2}
KINDS = ["onnx", "onnx-int8", "openvino", "openvino-int8", "openvino-bf16"]


async def _post(client, path: str, body: dict) -> dict:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _probabilities(answer: dict) -> np.ndarray:
    return np.array([[label["score"] for label in sorted(item, key=lambda x: x["label"])]
                     for item in answer["results"]])


@on_the_session_loop
async def test_openvino_serves_the_fp32_files_answers(model_repo: Path) -> None:
    from app.settings import Settings

    async with serve(Settings(models_dir=model_repo, backends=KINDS, threads=1)) as client:
        listed = {m["name"]: m["backend"] for m in (await client.get("/models")).json()["models"]}
        got = {k: await _post(client, "/classify", {"inputs": TEXTS, "top_k": None, "model": f"sst2-student@{k}"})
               for k in ("onnx-int8", "openvino", "openvino-int8", "openvino-bf16")}
        got["onnx"] = await _post(client, "/classify", {"inputs": TEXTS, "top_k": None, "model": "sst2-student"})
        qa = {k: await _post(client, "/qa", {**QA, "model": f"squad-student@{k}"}) for k in ("openvino",)}
        qa["onnx"] = await _post(client, "/qa", {**QA, "model": "squad-student"})
        vectors = {k: np.array((await _post(client, "/embed", {"inputs": TEXTS, "model": m}))["embeddings"])
                   for k, m in (("onnx", "embed-student"), ("openvino", "embed-student@openvino"),
                                ("openvino-int8", "embed-student@openvino-int8"))}
    assert listed["sst2-student@openvino"] == "openvino"
    assert listed["sst2-student@openvino-int8"] == "openvino-int8"
    fp32 = _probabilities(got["onnx"])
    assert np.abs(_probabilities(got["openvino"]) - fp32).max() < 1e-4  # the same file's fp32 numbers
    assert np.abs(_probabilities(got["openvino-int8"]) - fp32).max() < 0.05  # int8, the same file as onnx-int8
    assert np.abs(_probabilities(got["openvino-bf16"]) - fp32).max() < 0.02  # the fp32 file in bf16
    spans = {k: [[(a["answer"], a["start"]) for a in item] for item in qa[k]["results"]] for k in qa}
    assert spans["openvino"] == spans["onnx"]
    assert len(spans["onnx"][0]) == 2
    scores = {k: [[a["score"] for a in item] for item in qa[k]["results"]] for k in qa}
    assert np.allclose(scores["openvino"], scores["onnx"], atol=1e-4)
    assert row_cosines(vectors["onnx"], vectors["openvino"]).min() > 0.99999
    assert 0.98 < row_cosines(vectors["onnx"], vectors["openvino-int8"]).min() < 0.99999  # int8's own, close


@on_the_session_loop
@pytest.mark.parametrize("guards", [
    {"guard": {"threshold": 1e9}},  # only ONNX Runtime's calibration: openvino-int8 uses it
    {"guard": {"threshold": 1e-12}, "guard_openvino": {"threshold": 1e9}},  # OpenVINO's own comes first
])
async def test_the_guard_of_openvino_int8_reads_again_on_openvinos_fp32_session(model_repo: Path, tmp_path: Path,
                                                                                guards: dict) -> None:
    from app.settings import Settings

    repo = guarded_copy(model_repo, tmp_path, "sst2-student", guards)  # 1e9: every item is a near tie
    async with serve(Settings(models_dir=repo, backends=["openvino", "openvino-int8"], threads=1)) as client:
        before = parse((await client.get("/metrics")).text)
        body = {"inputs": TEXTS, "top_k": None}
        fp32 = await _post(client, "/classify", {**body, "model": "sst2-student"})
        int8 = await _post(client, "/classify", {**body, "model": "sst2-student@openvino-int8"})
        after = parse((await client.get("/metrics")).text)
    assert int8["results"] == fp32["results"]  # OpenVINO's fp32 numbers, exactly
    assert [item.get("rechecked") for item in int8["items"]] == [True] * len(TEXTS)
    assert delta(before, after, "distilserve_int8_rechecked_total", backend="openvino-int8") == len(TEXTS)


def test_without_openvino_the_kind_is_refused_with_the_extra_to_install(model_repo: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from app.settings import Settings
    from inference.backends import BackendUnavailable, available_kinds, load_backend

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    monkeypatch.delitem(sys.modules, "inference.backends.openvino", raising=False)
    with pytest.raises(ValidationError, match=r"\['openvino-int8'\] need OpenVINO.*distilserve\[openvino\]"):
        Settings(models_dir=model_repo, backends=["onnx", "openvino-int8"])  # refused at start-up
    assert "openvino" not in available_kinds(model_repo / "sst2-student")  # not offered where it cannot run
    with pytest.raises(BackendUnavailable, match=r"pip install 'distilserve\[openvino\]'"):
        load_backend(model_repo / "sst2-student", "classification", "openvino")
