"""`python -m training guard` on a tiny exported classifier whose int8 file moves labels: the
threshold reads again what int8 changed on the calibration set, `evaluate` and `agreement` then
measure the int8 file as it is served, and `agreement` also reports the bare file."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from inference.backends import load_backend
from tests.tiny import WORDS
from tests.training.tiny_models import save_tiny
from training.cli import main
from training.evaluate import read_predictions
from training.export import export_model
from training.int8_guard import GROUPS, KEEP


def _near_ties(folder: Path, texts: list[str]) -> None:
    """Re-head the tiny classifier so that its two logits nearly tie on some of `texts`: the
    logit gap becomes the standardised position of each text's pooled vector along their first
    principal direction (about half the texts each way, a few near 0), which int8 can flip."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tests.tiny import build_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    encodings = build_tokenizer().encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in encodings])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encodings])
    with torch.no_grad():
        pooled = model.bert(input_ids=ids, attention_mask=mask).pooler_output  # [texts, hidden]
        centre = pooled.mean(0)
        direction = torch.linalg.svd(pooled - centre, full_matrices=False).Vh[0]  # [hidden]
        scale = 1.0 / float(((pooled - centre) @ direction).std())
        model.classifier.weight.zero_()
        model.classifier.weight[1] = direction * scale
        model.classifier.bias.copy_(torch.tensor([0.0, -float(centre @ direction) * scale]))
    model.save_pretrained(folder, safe_serialization=True)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _lead(record: dict) -> float:
    return math.inf if record["lead"] is None else float(record["lead"])


def _lossy_classifier(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny classifier with near ties, exported with a lossy int8 scheme, and its dev set."""
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(160)]
    folder = save_tiny(tmp_path, "bert", "classification", seed=3)
    _near_ties(folder, texts)
    export_model(folder, scheme="dynamic-per-channel", guard=False)  # a lossy scheme: near ties move
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{k % 2}\n" for k, t in enumerate(texts)))
    return folder, data


def test_the_guard_reads_again_what_int8_changed_and_agreement_reports_both(tmp_path: Path, capsys) -> None:
    folder, data = _lossy_classifier(tmp_path)
    for backend in ("onnx", "onnx-int8"):  # before any guard: the bare int8 file
        assert main(["evaluate", str(folder), "--backend", backend, "--data", str(data), "--name", "dev"]) == 0
    fp32, bare = read_predictions(folder, "dev", "onnx"), read_predictions(folder, "dev", "onnx-int8")
    changed = [a["prediction"] != b["prediction"] for a, b in zip(fp32, bare, strict=True)]
    assert any(changed), "the test needs an int8 file that moves labels"
    capsys.readouterr()

    assert main(["guard", str(folder), "--data", str(data)]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert _manifest(folder)["onnx"]["model.int8.onnx"]["guard"] == entry
    threshold, leads = entry["threshold"], [_lead(r) for r in bare]
    under = [lead < threshold for lead in leads]
    assert entry["validation"]["changed"] == sum(changed)
    assert entry["validation"]["missed"] == sum(c and not u for c, u in zip(changed, under, strict=True))
    assert entry["rechecked_share"] == pytest.approx(sum(under) / len(under), abs=1e-6)
    assert entry["rechecked_share"] <= entry["most"]
    # every changed item is read again, unless that would pass the cap on the share
    capped = entry["rechecked_share"] >= entry["most"] - 1 / len(under)
    assert entry["validation"]["missed"] == 0 or capped
    # the floor: how far int8 moves leads on 99.5% of the items (same answer: the difference)
    fp32_leads = [_lead(r) for r in fp32]
    moves = [abs(a - b) if not c else a + b for a, b, c in zip(leads, fp32_leads, changed, strict=True)]
    assert all(r["runner_up"] for r in fp32 + bare)  # two labels: the same pair in both runs
    assert threshold >= float(np.quantile([m for m in moves if math.isfinite(m)], 0.995)) - 1e-6 or capped

    assert main(["agreement", str(folder), "--data", str(data), "--name", "dev"]) == 0
    agreement = _manifest(folder)["int8_agreement"]["dev"]
    served = read_predictions(folder, "dev", "onnx-int8")  # evaluated with the guard now
    for a, b, u in zip(fp32, served, under, strict=True):
        assert bool(b.get("rechecked")) == u
        if u:
            assert b["prediction"] == a["prediction"]
    assert agreement["differ"] == entry["validation"]["missed"]
    assert agreement["guard"]["rechecked"] == sum(under)
    assert agreement["guard"]["bare"]["differ"] == sum(changed)
    assert agreement["guard"]["bare"]["label_agreement"]["value"] == pytest.approx(1 - sum(changed) / len(changed))
    quality = _manifest(folder)["quality"]["dev"]["onnx-int8"]
    assert quality["guard"] == {"threshold": threshold, "rechecked": sum(under),
                                "rechecked_share": round(sum(under) / len(under), 6)}


def test_openvino_int8_has_its_own_guard_beside_onnx_runtimes(tmp_path: Path, capsys) -> None:
    """OpenVINO runs the same int8 file with other arithmetic: `guard --backend openvino-int8`
    calibrates its own threshold under its own key, and `evaluate` / `agreement` on that backend
    read again exactly the OpenVINO answers under it."""
    folder, data = _lossy_classifier(tmp_path)
    assert main(["guard", str(folder), "--data", str(data)]) == 0
    onnx_runtime = json.loads(capsys.readouterr().out)
    # OpenVINO's activation group size chosen as served: the cheapest that keeps KEEP guarded
    assert main(["guard", str(folder), "--data", str(data), "--backend", "openvino-int8"]) == 0
    entry = json.loads(capsys.readouterr().out)
    groups = entry["groups"]
    assert list(groups) == [str(g) for g in GROUPS]
    keeping = [g for g, e in groups.items() if e["validation"]["agreement_guarded"] >= KEEP]
    assert str(entry["group_size"]) == min(keeping, key=lambda g: groups[g]["cost_s"])
    for g in groups.values():
        assert g["cost_s"] == pytest.approx(g["bare_s"] + g["rechecked_share"] * entry["fp32_s"], abs=2e-3)
    assert load_backend(folder, "classification", "openvino-int8").group == entry["group_size"]  # served so

    # one group size (timing picks among several): what is guarded under it, evaluated as served
    assert main(["guard", str(folder), "--data", str(data), "--backend", "openvino-int8",
                 "--openvino-groups", "32"]) == 0
    entry = json.loads(capsys.readouterr().out)
    int8 = _manifest(folder)["onnx"]["model.int8.onnx"]
    assert (int8["guard"], int8["guard_openvino"]) == (onnx_runtime, entry)
    assert (entry["backend"], entry["group_size"], list(entry["groups"])) == ("openvino-int8", 32, ["32"])
    assert entry["threshold"] != onnx_runtime["threshold"]  # other arithmetic, other near ties

    assert main(["evaluate", str(folder), "--backend", "openvino-int8", "--data", str(data), "--name", "dev"]) == 0
    assert _manifest(folder)["quality"]["dev"]["openvino-int8"]["guard"]["threshold"] == entry["threshold"]
    assert main(["agreement", str(folder), "--data", str(data), "--name", "dev", "--backend", "openvino-int8"]) == 0
    agreement = _manifest(folder)["int8_agreement"]["dev@openvino-int8"]
    assert agreement["backend"] == "openvino-int8"
    assert agreement["differ"] == entry["validation"]["missed"]
    # OpenVINO on an AVX2 CPU moves leads too little to read any again: then no guard figures
    guarded = agreement.get("guard", {"rechecked_share": 0.0, "bare": {"differ": agreement["differ"]}})
    assert guarded["bare"]["differ"] == entry["validation"]["changed"]
    assert guarded["rechecked_share"] == pytest.approx(entry["rechecked_share"], abs=1e-6)
    assert "dev" not in _manifest(folder).get("int8_agreement", {})  # ONNX Runtime's figure is not overwritten


def test_an_embedding_model_has_no_guard_to_calibrate(tmp_path: Path, caplog) -> None:
    folder = save_tiny(tmp_path, "mpnet", "embedding", seed=5)
    export_model(folder)
    assert main(["guard", str(folder), "--data", str(tmp_path / "none.tsv")]) == 2
    assert "task 'embedding' has no best answer to keep; the int8 guard serves classification, qa" in caplog.text


def test_export_checks_the_int8_file_as_served_with_its_guard(tmp_path: Path) -> None:
    """An int8 file that moves labels fails a bare check that wants them all, and is checked as
    served: the guard chosen on the parity items, recorded beside the file, reads the near ties
    again in fp32 (up to `most` of them: on an AVX2 CPU, whose int8 arithmetic moves leads more
    than AVX-512 VNNI's, that cap can leave a flip unread), and `agreement` then finds what that
    guard missed."""
    from training.export import ExportParityError

    rng = random.Random(1)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(160)]
    folder = save_tiny(tmp_path, "bert", "classification", seed=3)
    _near_ties(folder, texts)
    strict = {"int8": {"label_agreement": 1.0}, "int8-guarded": {"label_agreement": 1.0}}
    with pytest.raises(ExportParityError, match="label_agreement"):
        export_model(folder, scheme="dynamic-per-channel", parity_texts=texts, tolerances=strict, guard=False)

    served = {**strict, "int8-guarded": {"label_agreement": 0.98}}
    export_model(folder, scheme="dynamic-per-channel", parity_texts=texts, tolerances=served)
    entry = _manifest(folder)["onnx"]["model.int8.onnx"]
    guard, n = entry["guard"], len(texts)
    assert entry["checked_as"] == "int8-guarded"
    assert guard["validation"]["changed"] == round((1 - entry["parity_bare"]["label_agreement"]) * n) > 0
    assert guard["validation"]["missed"] < guard["validation"]["changed"] / 4  # most flips are read again
    assert entry["parity"]["label_agreement"] == 1 - guard["validation"]["missed"] / n
    assert 0 < guard["rechecked_share"] <= guard["most"]
    speed = entry["speed"]
    assert guard["cost_ms"] == pytest.approx(speed["int8_ms"] + guard["rechecked_share"] * speed["fp32_ms"], abs=0.01)

    data = tmp_path / "parity.tsv"  # the parity texts, served
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{k % 2}\n" for k, t in enumerate(texts)))
    assert main(["agreement", str(folder), "--data", str(data), "--name", "parity"]) == 0
    agreement = _manifest(folder)["int8_agreement"]["parity"]
    # dynamic int8 scales activations per batch, and parity batches by sevens where evaluate sorts
    # by length: leads near the threshold move a little between the two runs (more on AVX2)
    near = round(0.03 * n)
    assert abs(agreement["guard"]["bare"]["differ"] - guard["validation"]["changed"]) <= near
    assert abs(agreement["differ"] - guard["validation"]["missed"]) <= 1
    assert abs(agreement["guard"]["rechecked"] - round(guard["rechecked_share"] * n)) <= near
