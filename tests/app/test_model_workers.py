"""The model-worker choice: measured once the service answers, while it has no request, and, with
a memory file, remembered per machine and model file, so that the next start makes the same
choice without measuring."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from app.settings import Settings
from tests.conftest import serve
from tests.polling import wait_for_async

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _workers(client) -> dict[str, int]:
    return {m["name"]: m["model_workers"] for m in (await client.get("/models")).json()["models"]}


async def _choices(client) -> dict[str, str]:
    return {m["name"]: m["model_workers_choice"] for m in (await client.get("/models")).json()["models"]}


async def _measured(client) -> dict[str, int]:
    """Every model's worker count once all are measured (polled)."""

    async def done() -> bool:
        return set((await _choices(client)).values()) == {"measured"}

    await wait_for_async(done, timeout=120, interval=0.1, what="every model's choice to be measured")
    return await _workers(client)


async def test_the_choice_is_remembered_and_read_back(model_repo: Path, tmp_path: Path) -> None:
    memory = tmp_path / "workers.json"
    settings = Settings(models_dir=model_repo, backends=["onnx"], threads=1, model_workers_memory=memory)
    async with serve(settings) as client:
        measured = await _measured(client)
    entries = json.loads(memory.read_text())
    assert len(entries) == len(measured) == 6
    for entry in entries.values():
        assert entry["workers"] in (1, 2)
        assert entry["workers"] == (2 if entry["ratio"] >= 1.15 else 1)  # decided on the median paired ratio
        assert entry["one_items_s"] > 0
        assert entry["two_items_s"] > 0
    assert sorted(e["workers"] for e in entries.values()) == sorted(measured.values())
    flipped = {key: {**e, "workers": 3 - e["workers"]} for key, e in entries.items()}
    memory.write_text(json.dumps(flipped))
    async with serve(settings) as client:
        again = await _workers(client)
        assert set((await _choices(client)).values()) == {"remembered"}
    assert again == {name: 3 - n for name, n in measured.items()}  # read back, not measured again


async def test_the_choice_is_measured_only_while_no_request_runs(model_repo: Path, tmp_path: Path) -> None:
    """The service answers before the choice is made, on one call per model; while requests keep
    coming nothing is measured (each pair waits for half a second without one), and once they
    stop every model is measured, the ones where two calls won then running two."""
    memory = tmp_path / "workers.json"
    settings = Settings(models_dir=model_repo, backends=["onnx"], threads=1, model_workers_memory=memory)
    async with serve(settings) as client:
        assert set((await _workers(client)).values()) == {1}
        started, labels = time.monotonic(), set()
        while time.monotonic() - started < 2.0:  # 2 s of traffic, never 0.5 s apart
            r = await client.post("/classify", json={"inputs": "a fine film"})
            assert r.status_code == 200
            labels.add(r.json()["results"][0][0]["label"])
            assert set((await _choices(client)).values()) == {"measuring"}
        assert not memory.exists()
        assert labels
        assert labels <= {"negative", "positive"}
        measured = await _measured(client)
        texts = [f"a fine film, take {i}" for i in range(16)]  # on the workers as they now are
        together = await asyncio.gather(*(client.post("/classify", json={"inputs": t}) for t in texts))
        alone = [await client.post("/classify", json={"inputs": t}) for t in texts]
        assert [r.json()["results"] for r in together] == [r.json()["results"] for r in alone]
    entries = json.loads(memory.read_text())
    assert sorted(e["workers"] for e in entries.values()) == sorted(measured.values())


async def test_an_unreadable_memory_is_measured_around(model_repo: Path, tmp_path: Path) -> None:
    memory = tmp_path / "workers.json"
    memory.write_text("not json")
    settings = Settings(models_dir=model_repo, backends=["onnx"], threads=1, model_workers_memory=memory)
    async with serve(settings) as client:
        assert set((await _measured(client)).values()) <= {1, 2}
    assert len(json.loads(memory.read_text())) == 6  # rewritten with what was measured


async def _layout(client) -> dict[str, tuple[int, int | None]]:
    return {m["name"]: (m["model_workers"], m["split_threads"]) for m in (await client.get("/models")).json()["models"]}


async def test_concurrent_calls_get_a_session_of_their_own_share_of_the_cores(model_repo: Path) -> None:
    """Two calls in flight on default threads: a second session with half the cores' threads
    opens in the background for the call that starts while the other runs; with threads set
    (or one call) there is nothing to split."""
    cores = len(os.sched_getaffinity(0))
    settings = Settings(models_dir=model_repo, backends=["onnx"], model_workers=2)
    async with serve(settings) as client:
        if cores >= 2:
            split = await wait_for_async(lambda: _all_split(client), timeout=60)
            assert set(split.values()) == {(2, cores // 2)}
        texts = [f"a fine film, take {i}" for i in range(24)]
        together = await asyncio.gather(*(client.post("/classify", json={"inputs": t}) for t in texts))
        alone = [await client.post("/classify", json={"inputs": t}) for t in texts]
        for a, b in zip(together, alone, strict=True):
            assert a.json()["results"][0][0]["label"] == b.json()["results"][0][0]["label"]
            assert abs(a.json()["results"][0][0]["score"] - b.json()["results"][0][0]["score"]) < 1e-4
    for pinned in (Settings(models_dir=model_repo, backends=["onnx"], model_workers=2, threads=1),
                   Settings(models_dir=model_repo, backends=["onnx"], model_workers=1)):
        async with serve(pinned) as client:
            assert {s for _, s in (await _layout(client)).values()} == {None}


async def _all_split(client) -> dict[str, tuple[int, int | None]] | None:
    layout = await _layout(client)
    return layout if all(s is not None for _, s in layout.values()) else None
