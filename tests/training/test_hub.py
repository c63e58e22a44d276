"""Hub ids and hub datasets in training, offline: a base model given as a hub id resolves from a
hub cache (tests/hubcache.py), and `hf:<dataset>[@<split>]` data loads through
`datasets.load_dataset` - here on a local folder, which takes the same call as a hub name."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.hubcache import add_model, offline_env
from tests.training.conftest import FILLER, NEGATIVE, POSITIVE, sentence
from tests.training.tiny_models import save_tiny
from training.data import DataError, load_squad_articles, parse_hub_spec

REPO = Path(__file__).resolve().parents[2]
TINY = ["batch_size=8", "teacher_epochs=2", "threads=1", "min_words=0", "teacher_train_top=2"]
HUB_BASE = "distilserve-tests/tiny-bert-base"
CLASSES = ["positive", "negative"]  # the dataset's ClassLabel order, reversed from the recipe's labels


def cli(*args: str, root: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m training ...` with the hub and datasets caches under `root`, offline."""
    env = {**os.environ, **offline_env(root), "DISTILSERVE_CACHE_DIR": str(root / "cache"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True,
                          check=False, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}")
    return done


def sets(*items: str) -> list[str]:
    return [arg for item in (*TINY, *items) for arg in ("--set", item)]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def reviews(rows: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, label name) pairs, two positive to one negative (a constant guess is not 0.5)."""
    rng = random.Random(seed)
    return [(sentence(rng, NEGATIVE if i % 3 == 2 else POSITIVE), "negative" if i % 3 == 2 else "positive")
            for i in range(rows)]


def write_hub_folder(folder: Path, splits: dict[str, list[tuple[str, str | None]]]) -> Path:
    """Parquet splits carrying ClassLabel features (as a hub dataset does); a None label is -1."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=CLASSES)})
    folder.mkdir(parents=True)
    for split, rows in splits.items():
        labels = [CLASSES.index(label) if label else -1 for _, label in rows]
        Dataset.from_dict({"sentence": [s for s, _ in rows], "label": labels}, features=features).to_parquet(
            folder / f"{split}.parquet")
    return folder


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows))
    return path


def test_hub_specs_parse_and_squad_stays_file_only() -> None:
    assert parse_hub_spec("hf:glue:sst2@validation") == ("glue", "sst2", "validation")
    assert parse_hub_spec("hf:stanfordnlp/sst2") == ("stanfordnlp/sst2", None, "train")
    assert parse_hub_spec("hf:/data/reviews@test") == ("/data/reviews", None, "test")
    with pytest.raises(DataError, match="expected hf:<dataset>"):
        parse_hub_spec("hf:glue@")
    with pytest.raises(DataError, match="SQuAD needs a JSON file"):
        load_squad_articles("hf:squad@validation")


def test_train_from_a_hub_base_id(tmp_path: Path, tiny_bases: dict, tiny_data: dict) -> None:
    add_model(tmp_path / "hub", HUB_BASE, tiny_bases["bert"])
    out = tmp_path / "teacher"
    cli("train", "--task", "classification", "--data", str(tiny_data["sst2_train"]), "--base", HUB_BASE,
        "--out", str(out), *sets(), root=tmp_path)
    m = manifest(out)
    assert m["recipe"]["base"] == HUB_BASE
    assert m["layers"] == 4
    assert m["data"][0]["rows"] == 96 - 9  # a tenth (9 rows) is the validation split, never trained on
    assert m["validation"]["rows"] == 9
    assert m["trained_layers"] == [2, 3]
    assert m["training"]["steps"] > 0
    base = load_file(tiny_bases["bert"] / "model.safetensors")  # frozen lower layers: the hub weights as is
    trained = load_file(out / "model.safetensors")
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"):
        assert (trained[f"bert.{key}"] == base[key]).all(), key
    missing = cli("train", "--task", "classification", "--data", str(tiny_data["sst2_train"]),
                  "--base", "distilserve-tests/not-cached", "--out", str(tmp_path / "none"), root=tmp_path, check=False)
    assert missing.returncode != 0
    assert "distilserve-tests/not-cached" in missing.stderr


def test_hub_dataset_trains_and_evaluates(tmp_path: Path, tiny_bases: dict) -> None:
    """Train on hf:<folder> (a -1 label row: error naming spec and row, or skipped and counted),
    evaluate on hf:<folder>@validation: the same figure as the same rows from a TSV file."""
    train, dev = reviews(48, 0), reviews(24, 1)
    folder = write_hub_folder(tmp_path / "reviews", {"train": [*train[:5], (train[5][0], None), *train[5:]],
                                                       "validation": dev})
    spec, out = f"hf:{folder}", tmp_path / "teacher"
    args = ["train", "--task", "classification", "--base", str(tiny_bases["bert"]), "--out", str(out)]
    bad = cli(*args, "--data", spec, *sets(), root=tmp_path, check=False)
    assert bad.returncode != 0
    assert f"{spec}:5: missing label" in bad.stderr
    cli(*args, "--skip-bad", *sets(f"train_data={spec}"), root=tmp_path)
    record = manifest(out)["data"][0]
    # 4 of the 48 good rows are the validation split
    assert (record["path"], record["rows"], record["skipped"], record["split"]) == (spec, 48 - 4, 1, "train")
    assert len(record["sha256"]) == 64

    cli("evaluate", str(out), "--backend", "torch", "--data", f"{spec}@validation", root=tmp_path)
    cli("evaluate", str(out), "--backend", "torch", "--data", str(write_tsv(tmp_path / "tsv" / "dev.tsv", dev)),
        root=tmp_path)
    quality = manifest(out)["quality"]
    hub, tsv = quality["reviews-validation"]["torch"], quality["tsv-dev"]["torch"]
    assert hub["data"]["path"] == f"{spec}@validation"
    assert len(hub["data"]["sha256"]) == 64
    assert hub["rows"] == tsv["rows"] == 24
    assert hub["accuracy"] == tsv["accuracy"]
    assert hub["accuracy"] != 0.5  # so a label mix-up (accuracy 1 - x) could not pass as equal


def test_hub_sts_data_evaluates_an_embedding_model(tmp_path: Path) -> None:
    """Float scores and sentence pairs from a hub split give the figures of the same TSV rows."""
    from datasets import Dataset

    rng = random.Random(2)
    pairs = [(sentence(rng, POSITIVE), " ".join(rng.sample(FILLER, 4)), round(rng.uniform(0, 5), 2)) for _ in range(16)]
    folder = tmp_path / "sts"
    folder.mkdir()
    Dataset.from_dict({"sentence1": [a for a, _, _ in pairs], "sentence2": [b for _, b, _ in pairs],
                       "label": [s for _, _, s in pairs]}).to_parquet(folder / "validation.parquet")
    tsv = tmp_path / "stsb" / "dev.tsv"
    tsv.parent.mkdir()
    tsv.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    model = save_tiny(tmp_path / "models", "bert", "embedding")
    for data in (f"hf:{folder}@validation", str(tsv)):
        cli("evaluate", str(model), "--backend", "torch", "--data", data, root=tmp_path)
    quality = manifest(model)["quality"]
    hub, file = quality["sts-validation"]["torch"], quality["stsb-dev"]["torch"]
    assert hub["rows"] == file["rows"] == 16
    assert hub["spearman"] == pytest.approx(file["spearman"], abs=1e-9)
