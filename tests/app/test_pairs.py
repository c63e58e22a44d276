"""Several teacher/student pairs per task: aliases resolve within the task's default pair,
`<pair>:role` picks any other, /models lists pairs, and a lone model is served as `model`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.settings import Settings
from tests.conftest import serve

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _copy_pair(src: Path, dst: Path, prefix: str, pair: str | None, recipe: str | None) -> None:
    """The tiny sst2 pair under new names: folders, manifest names, links, pair and recipe."""
    for role in ("teacher", "student"):
        folder = dst / f"{prefix}-{role}"
        shutil.copytree(src / f"sst2-{role}", folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.update(name=folder.name, teacher=f"{prefix}-teacher" if role == "student" else None,
                        student=f"{prefix}-student" if role == "teacher" else None)
        if pair is not None:
            manifest["pair"] = pair
        if recipe is not None:
            manifest["recipe"] = {"name": recipe}
        (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def two_pairs(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sst2-quick (named pair, quick recipe) and sst2-standard (standard recipe)."""
    root = tmp_path_factory.mktemp("pairs")
    _copy_pair(model_repo, root, "sst2-quick", "sst2-quick", "quick")
    _copy_pair(model_repo, root, "sst2-standard", "sst2-standard", "standard")
    return root


def _settings(models: Path, **extra: object) -> Settings:
    return Settings(models_dir=models, backends=["onnx"], threads=1, warmup=False, **extra)


async def _served_by(client, name: str | None) -> str:
    body = {"inputs": ["a fine film"], **({"model": name} if name else {})}
    response = await client.post("/classify", json=body)
    assert response.status_code == 200, response.text
    return response.json()["model"]


async def test_aliases_resolve_in_the_longest_trained_pair_and_pair_prefixes_pick_others(two_pairs: Path) -> None:
    async with serve(_settings(two_pairs)) as client:
        pairs = {p["name"]: p for p in (await client.get("/models")).json()["pairs"]}
        assert pairs["sst2-standard"] == {"name": "sst2-standard", "task": "classification", "recipe": "standard",
                                          "teacher": "sst2-standard-teacher", "student": "sst2-standard-student",
                                          "default": True}
        assert pairs["sst2-quick"]["default"] is False
        assert await _served_by(client, None) == "sst2-standard-student"
        assert await _served_by(client, "teacher") == "sst2-standard-teacher"
        assert await _served_by(client, "sst2-quick:student") == "sst2-quick-student"
        assert await _served_by(client, "sst2-quick:teacher@onnx") == "sst2-quick-teacher"
        missing = await client.post("/classify", json={"inputs": ["x"], "model": "sst2-nope:student"})
        assert missing.status_code == 404
        assert missing.json()["error"]["param"] == "model"


async def test_the_default_pair_setting_wins_and_compare_takes_a_pair(two_pairs: Path) -> None:
    async with serve(_settings(two_pairs, default_classification_pair="sst2-quick")) as client:
        assert await _served_by(client, "student") == "sst2-quick-student"
        body = {"task": "classification", "inputs": ["a fine film"], "pair": "sst2-standard"}
        compared = (await client.post("/compare", json=body)).json()
        assert (compared["teacher"]["model"], compared["student"]["model"]) == (
            "sst2-standard-teacher", "sst2-standard-student")


async def test_an_unknown_default_pair_keeps_the_service_not_ready_and_names_it(two_pairs: Path) -> None:
    async with serve(_settings(two_pairs, default_classification_pair="sst2-full"), wait_ready=False) as client:
        from tests.polling import wait_for_async

        async def named() -> bool:
            return "sst2-full" in (await client.get("/ready")).text

        await wait_for_async(named, 30, 0.05, what="/ready to name the unknown default pair")
        assert (await client.get("/ready")).status_code == 503


async def test_a_lone_plain_folder_is_a_model_and_its_tasks_default(model_repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-classifier"
    shutil.copytree(model_repo / "sst2-teacher", folder)
    (folder / "manifest.json").unlink()  # a plain Hugging Face folder with an ONNX file
    async with serve(_settings(tmp_path)) as client:
        listed = (await client.get("/models")).json()
        assert [(m["name"], m["role"], m["pair"]) for m in listed["models"]] == [("my-classifier", "model", None)]
        assert listed["pairs"] == []
        assert await _served_by(client, None) == "my-classifier"
        named_role = await client.post("/classify", json={"inputs": ["x"], "model": "teacher"})
        assert named_role.status_code == 404  # a lone model is no teacher
