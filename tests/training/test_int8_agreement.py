"""`python -m training agreement` on tiny exported models: int8 against fp32 on the evaluation
set, item by item, recorded in the manifest beside the int8 file's own quality figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.test_evaluate import PAIRS, SENTENCES, _squad
from tests.training.tiny_models import save_tiny
from training.cli import main
from training.evaluate import read_predictions
from training.export import export_model


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_classification_agreement_is_the_share_of_same_labels(tmp_path: Path, capsys) -> None:
    folder = save_tiny(tmp_path, "bert", "classification", seed=3)
    export_model(folder, scheme="dynamic-per-channel")  # a lossy scheme: some labels may move
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in SENTENCES))
    assert main(["agreement", str(folder), "--data", str(data), "--name", "dev"]) == 0  # fp32 evaluated too
    printed = json.loads(capsys.readouterr().out)
    entry = _manifest(folder)["int8_agreement"]["dev"]
    assert printed == entry
    fp32, int8 = read_predictions(folder, "dev", "onnx"), read_predictions(folder, "dev", "onnx-int8")
    same = [a["prediction"] == b["prediction"] for a, b in zip(fp32, int8, strict=True)]
    assert entry["items"] == len(SENTENCES) == len(same)
    assert entry["label_agreement"] == pytest.approx(sum(same) / len(same))
    assert entry["differ"] == same.count(False)
    ci = entry["interval"]["label_agreement"]
    assert ci["low"] <= entry["label_agreement"] <= ci["high"] <= 1.0
    assert entry["scheme"] == "dynamic-per-channel"
    assert entry["target"] == {"label_agreement": 0.995, "met": entry["label_agreement"] >= 0.995}
    quality = _manifest(folder)["quality"]["dev"]["onnx-int8"]  # the int8 file's own accuracy is recorded
    assert entry["int8_quality"]["accuracy"]["value"] == pytest.approx(quality["accuracy"])


def test_qa_agreement_compares_answer_texts(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "bert", "qa", seed=7)
    export_model(folder)
    data = _squad(tmp_path / "squad.json")
    assert main(["evaluate", str(folder), "--backend", "onnx", "--data", str(data)]) == 0
    assert main(["agreement", str(folder), "--data", str(data)]) == 0
    name = next(iter(_manifest(folder)["int8_agreement"]))
    entry = _manifest(folder)["int8_agreement"][name]
    fp32, int8 = read_predictions(folder, name, "onnx"), read_predictions(folder, name, "onnx-int8")
    assert entry["items"] == len(fp32) == len(int8) > 0
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(fp32, int8, strict=True))
    assert entry["span_agreement"] == pytest.approx(same / len(fp32))


def test_embedding_agreement_is_the_cosine_of_each_sentence(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "mpnet", "embedding", seed=5)
    export_model(folder)
    data = tmp_path / "stsb" / "dev.tsv"
    data.parent.mkdir()
    data.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    assert main(["agreement", str(folder), "--data", str(data)]) == 0
    entry = _manifest(folder)["int8_agreement"]["stsb-dev"]
    assert entry["items"] == 2 * len(PAIRS)  # every sentence of both columns
    assert 0.9 < entry["min_cosine"] <= entry["mean_cosine"] <= 1.0 + 1e-9
    assert np.isfinite(entry["interval"]["mean_cosine"]["low"])
    assert "spearman" in entry["int8_quality"]
    # a build hands over the fp32 evaluation it has just run: the same figures, fp32 not run again
    from training.evaluate import evaluate_model
    from training.int8_agreement import measure

    fp32 = evaluate_model(folder, "onnx", data, set_name="stsb-dev")
    again = measure(folder, data, set_name="stsb-dev", fp32=fp32)
    assert (again["mean_cosine"], again["min_cosine"]) == (entry["mean_cosine"], entry["min_cosine"])
    other = {**fp32, "rows": fp32["rows"] - 1, "outputs": fp32["outputs"][:-1]}  # other items: not trusted
    assert measure(folder, data, set_name="stsb-dev", fp32=other)["items"] == 2 * len(PAIRS)


def test_model_without_int8_file_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = save_tiny(tmp_path, "bert", "classification")
    export_model(folder, int8=False)
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in SENTENCES))
    assert main(["agreement", str(folder), "--data", str(data)]) == 2
    assert "no model.int8.onnx (export it first" in caplog.text
