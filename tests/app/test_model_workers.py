"""The model-worker choice: measured at warm-up and, with a memory file, remembered per machine
and model file, so that the next start makes the same choice without measuring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.settings import Settings
from tests.conftest import serve

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _workers(client) -> dict[str, int]:
    return {m["name"]: m["model_workers"] for m in (await client.get("/models")).json()["models"]}


async def test_the_choice_is_remembered_and_read_back(model_repo: Path, tmp_path: Path) -> None:
    memory = tmp_path / "workers.json"
    settings = Settings(models_dir=model_repo, backends=["onnx"], threads=1, model_workers_memory=memory)
    async with serve(settings) as client:
        measured = await _workers(client)
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
    assert again == {name: 3 - n for name, n in measured.items()}  # read back, not measured again


async def test_an_unreadable_memory_is_measured_around(model_repo: Path, tmp_path: Path) -> None:
    memory = tmp_path / "workers.json"
    memory.write_text("not json")
    settings = Settings(models_dir=model_repo, backends=["onnx"], threads=1, model_workers_memory=memory)
    async with serve(settings) as client:
        assert set((await _workers(client)).values()) <= {1, 2}
    assert len(json.loads(memory.read_text())) == 6  # rewritten with what was measured
