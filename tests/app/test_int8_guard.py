"""The int8 guard over HTTP: an int8 model whose manifest records a guard reads its near ties
again on its fp32 file, says so per item, counts it in /metrics, and can be switched off."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.guarded import guarded_copy
from tests.conftest import serve
from tests.scrape import delta, parse

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = ["a good film", "the worst movie of the year, really boring", "funny story", "dull", "a fine cast"]
QA = {"question": "who jumps?", "context": "the quick brown fox jumps over the lazy dog", "top_k": 2}


def _guarded_copy(model_repo: Path, tmp_path: Path, name: str, threshold: float) -> Path:
    """A repository holding one model of `model_repo`, its int8 file guarded at `threshold`."""
    return guarded_copy(model_repo, tmp_path, name, {"guard": {"threshold": threshold}})


async def _answers(client, path: str, body: dict) -> dict:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_every_item_under_the_threshold_gets_the_fp32_answer(model_repo: Path, tmp_path: Path) -> None:
    from app.settings import Settings

    repo = _guarded_copy(model_repo, tmp_path, "sst2-student", 1e9)  # every answer is a "near tie"
    async with serve(Settings(models_dir=repo, backends=["onnx", "onnx-int8"], threads=1)) as client:
        before = parse((await client.get("/metrics")).text)
        body = {"inputs": TEXTS, "top_k": None}
        fp32 = await _answers(client, "/classify", {**body, "model": "sst2-student"})
        int8 = await _answers(client, "/classify", {**body, "model": "sst2-student@onnx-int8"})
        after = parse((await client.get("/metrics")).text)
        listed = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
    assert listed["sst2-student@onnx-int8"]["int8_guard"] == 1e9
    assert listed["sst2-student"]["int8_guard"] is None
    assert int8["results"] == fp32["results"]  # the very fp32 numbers, not int8's
    assert [item.get("rechecked") for item in int8["items"]] == [True] * len(TEXTS)
    assert all("rechecked" not in item for item in fp32["items"])
    assert delta(before, after, "distilserve_int8_rechecked_total", backend="onnx-int8") == len(TEXTS)


async def test_no_item_is_read_again_above_the_threshold_or_with_the_guard_off(model_repo: Path,
                                                                                tmp_path: Path) -> None:
    from app.settings import Settings

    body = {"inputs": TEXTS, "top_k": None, "model": "sst2-student@onnx-int8"}
    bare = {}
    for threshold, enabled in ((1e-12, True), (1e9, False)):
        repo = _guarded_copy(model_repo, tmp_path / f"{threshold}-{enabled}", "sst2-student", threshold)
        settings = Settings(models_dir=repo, backends=["onnx", "onnx-int8"], threads=1, int8_guard=enabled)
        async with serve(settings) as client:
            answer = await _answers(client, "/classify", body)
        assert all("rechecked" not in item for item in answer["items"])
        bare[enabled] = answer["results"]
    assert bare[True] == bare[False]  # both are the int8 file's own answers


async def test_qa_near_ties_are_read_again_whole(model_repo: Path, tmp_path: Path) -> None:
    """A QA item is read again with all its windows: the answers (spans and scores) are fp32's."""
    from app.settings import Settings

    repo = _guarded_copy(model_repo, tmp_path, "squad-teacher", 1e9)
    async with serve(Settings(models_dir=repo, backends=["onnx", "onnx-int8"], threads=1)) as client:
        fp32 = await _answers(client, "/qa", {**QA, "model": "squad-teacher"})
        int8 = await _answers(client, "/qa", {**QA, "model": "squad-teacher@onnx-int8"})
    assert int8["results"] == fp32["results"]
    assert int8["items"][0]["rechecked"] is True
    assert int8["items"][0]["windows"] == fp32["items"][0]["windows"]


async def test_an_fp32_file_that_does_not_open_leaves_the_int8_answers(model_repo: Path, tmp_path: Path) -> None:
    """The fp32 file opens in the background; if it cannot, the near ties keep int8's answers
    (logged) and the service goes on answering."""
    from app.settings import Settings

    repo = _guarded_copy(model_repo, tmp_path, "sst2-student", 1e9)
    (repo / "sst2-student" / "model.onnx").write_bytes(b"not an onnx graph")
    body = {"inputs": TEXTS, "top_k": None, "model": "sst2-student"}  # int8, the one backend served
    async with serve(Settings(models_dir=repo, backends=["onnx-int8"], threads=1)) as client:
        first, again = await _answers(client, "/classify", body), await _answers(client, "/classify", body)
    assert first["results"] == again["results"]
    assert len(first["results"]) == len(TEXTS)
    assert all("rechecked" not in item for item in first["items"] + again["items"])


async def test_an_int8_file_slower_than_fp32_is_said_at_start(model_repo: Path, tmp_path: Path, caplog) -> None:
    """Where the export found no int8 scheme faster than fp32 (an AVX2 CPU), serving it warns."""
    from app.settings import Settings

    for speedup, warned in ((0.74, True), (1.3, False)):
        caplog.clear()
        repo = guarded_copy(model_repo, tmp_path / str(speedup), "sst2-student", {"served_speedup": speedup})
        async with serve(Settings(models_dir=repo, backends=["onnx", "onnx-int8"], threads=1)) as client:
            assert (await client.get("/models")).status_code == 200
        slow = [r.getMessage() for r in caplog.records if "int8 file ran at" in r.getMessage()]
        assert slow == (["model sst2-student@onnx-int8: its int8 file ran at 0.74x fp32 as served where it was "
                         "exported; onnx is faster on such a CPU"] if warned else [])
