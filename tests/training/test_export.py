"""`python -m training export` on tiny BERT and MPNet models: contract IO names, dynamic axes,
parity recorded in the manifest, and a breached tolerance failing the export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from inference.backends import OPENVINO_KINDS, OUTPUT_NAMES
from inference.modelfolder import read_spec
from tests.training.tiny_models import save_tiny
from training.cli import main
from training.export import ExportParityError, export_model
from training.int8 import AUTO_CHAIN

CASES = [("bert", "classification"), ("bert", "qa"), ("mpnet", "embedding"), ("mpnet", "classification")]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_outputs(folder: Path, task: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import transformers as tf

    cls = {"classification": tf.AutoModelForSequenceClassification, "qa": tf.AutoModelForQuestionAnswering,
           "embedding": tf.AutoModel}[task]
    model = cls.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return [out[name].numpy() for name in OUTPUT_NAMES[task]]


@pytest.mark.parametrize(("arch", "task"), CASES)
def test_export_writes_contract_graphs_with_parity(tmp_path: Path, arch: str, task: str, capsys) -> None:
    folder = save_tiny(tmp_path, arch, task)
    assert main(["export", str(folder), "--fuse"]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    fp32, int8 = manifest["onnx"]["model.onnx"], manifest["onnx"]["model.int8.onnx"]
    assert fp32["precision"] == "fp32"
    assert fp32["parity"]["ok"]
    assert fp32["parity"]["max_abs_diff"] < 1e-4
    assert int8["precision"] == "int8"
    assert int8["parity"]["ok"]
    _assert_cheapest_passing_kept(int8)
    _assert_fusion_recorded(folder, fp32["graph"])
    assert int8["graph"] == {**fp32["graph"], "quantised_from": "model.onnx"}
    assert set(int8["tolerance"])
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    assert "model.int8.onnx: int8 parity" in capsys.readouterr().out

    session = _session(folder / "model.onnx")
    expected_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if arch == "bert" else [])
    assert [i.name for i in session.get_inputs()] == expected_inputs
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES[task])
    for batch, seq in ((1, 3), (5, 23)):  # not the traced (2, 9)
        rng = np.random.default_rng(batch)
        ids = rng.integers(5, 60, size=(batch, seq)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[-1, seq // 2 :] = 0  # a padded row
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds = {k: feeds[k] for k in expected_inputs}
        got = session.run(None, feeds)
        for g, want in zip(got, _torch_outputs(folder, task, feeds), strict=False):
            assert g.shape == want.shape
            np.testing.assert_allclose(g, want, atol=1e-4)


def _assert_cheapest_passing_kept(entry: dict) -> None:
    """`auto` timed every candidate against fp32 here and kept the cheapest as served that passed
    parity: every candidate faster bare was checked and failed or costs more as served, and no
    candidate left unchecked could have cost less (its bare time alone is over the kept cost)."""
    candidates = entry["candidates"]
    assert sorted(c["scheme_name"] for c in candidates) == sorted(AUTO_CHAIN)
    assert [c["int8_ms"] for c in candidates] == sorted(c["int8_ms"] for c in candidates)
    assert all(c["fp32_ms"] > 0 and c["speedup"] == pytest.approx(c["fp32_ms"] / c["int8_ms"], rel=0.01)
               for c in candidates)
    names = [c["scheme_name"] for c in candidates]
    kept = names.index(entry["scheme_name"])
    assert entry["speed"] == {k: v for k, v in candidates[kept].items() if k != "scheme_name"}
    cost = entry["guard"]["cost_ms"] if "guard" in entry else entry["speed"]["int8_ms"]
    tried = {t["scheme_name"]: t for t in entry.get("schemes_tried", [])}
    assert set(names[:kept]) <= set(tried)
    for t in tried.values():
        assert t["parity"]["ok"] is False or t["guard"]["cost_ms"] >= cost
    unchecked = [c for c in candidates if c["scheme_name"] not in tried and c["scheme_name"] != entry["scheme_name"]]
    assert all(c["int8_ms"] >= cost for c in unchecked)


def _assert_fusion_recorded(folder: Path, graph: dict) -> None:
    """The offline fusion was measured; the file holds the fused graph exactly when it was kept."""
    import onnx

    from training.graph_opt import MIN_GAIN

    assert graph["at_load"].startswith("ORT_ENABLE_ALL")
    offline = graph["offline"]
    assert offline["fused"].get("SkipLayerNormalization", 0) > 0
    assert offline["speedup"] == pytest.approx(offline["plain_ms"] / offline["fused_ms"], rel=0.01)
    assert offline["kept"] == (offline["speedup"] >= MIN_GAIN)
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert ("SkipLayerNormalization" in ops) == offline["kept"]
    assert not list(folder.glob(".fused-*"))


@pytest.mark.parametrize(("arch", "task"), [("bert", "qa"), ("mpnet", "classification")])
def test_a_kept_fused_graph_passes_parity_and_every_int8_scheme_quantises_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, task: str) -> None:
    import training.graph_opt

    monkeypatch.setattr(training.graph_opt, "MIN_GAIN", 0.0)  # keep the fused graph whatever it measures
    folder = save_tiny(tmp_path, arch, task)
    onnx_entries = export_model(folder, fuse=True)["onnx"]
    assert onnx_entries["model.onnx"]["graph"]["offline"]["kept"] is True
    _assert_fusion_recorded(folder, onnx_entries["model.onnx"]["graph"])
    assert onnx_entries["model.onnx"]["parity"]["ok"]
    int8 = onnx_entries["model.int8.onnx"]
    assert len(int8["candidates"]) == len(AUTO_CHAIN)  # each scheme quantised the fused graph
    assert int8["parity"]["ok"]


def test_a_build_measures_speed_once_per_shape(tmp_path: Path) -> None:
    measured: dict = {}
    first = export_model(save_tiny(tmp_path, "mpnet", "classification"), measured=measured, fuse=True)["onnx"]
    second = export_model(save_tiny(tmp_path, "mpnet", "embedding"), measured=measured, fuse=True)["onnx"]  # same shape
    other = export_model(save_tiny(tmp_path, "bert", "classification"), measured=measured, fuse=True)["onnx"]
    assert len(measured) == 2  # one entry per shape
    for entry in (first, other):  # measured on themselves
        assert "measured_on" not in entry["model.onnx"]["graph"]["offline"]
        assert all("measured_on" not in c for c in entry["model.int8.onnx"]["candidates"])
    # the same-shape model reused the fusion decision and the candidates' order, and still passed parity
    assert second["model.onnx"]["graph"]["offline"] == {**first["model.onnx"]["graph"]["offline"],
                                                       "measured_on": "mpnet-classification"}
    reused = second["model.int8.onnx"]["candidates"]
    assert [c["scheme_name"] for c in reused] == [c["scheme_name"] for c in first["model.int8.onnx"]["candidates"]]
    assert {c["measured_on"] for c in reused} == {"mpnet-classification"}
    assert second["model.onnx"]["parity"]["ok"]
    assert second["model.int8.onnx"]["parity"]["ok"]
    _assert_cheapest_passing_kept(second["model.int8.onnx"])


def test_an_architecture_the_optimiser_rejects_exports_unfused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.graph_opt

    def refuse(path: Path, config: object) -> None:
        raise NotImplementedError("no fusion patterns for this architecture")

    monkeypatch.setattr(training.graph_opt, "fuse", refuse)
    entries = export_model(save_tiny(tmp_path, "bert", "classification"), int8=False, fuse=True)["onnx"]
    assert entries["model.onnx"]["parity"]["ok"]
    assert entries["model.onnx"]["graph"]["offline"] == {
        "error": "NotImplementedError: no fusion patterns for this architecture", "kept": False}


def test_without_fuse_the_exported_graph_is_left_as_it_is(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "bert", "classification")
    assert main(["export", str(folder), "--no-int8"]) == 0
    graph = json.loads((folder / "manifest.json").read_text())["onnx"]["model.onnx"]["graph"]
    assert graph["offline"] is None
    import onnx

    assert "SkipLayerNormalization" not in {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}


def test_an_int8_file_slower_than_fp32_as_served_is_recorded_and_warned(tmp_path: Path, caplog) -> None:
    """The served speed-up is recorded beside the int8 file; under 1 (AVX2 CPUs) the export warns.
    The speeds come from a build's memo of an earlier same-shape model (`measured`), so that the
    test sets them."""
    from training.int8_speed import shape_key

    folder = save_tiny(tmp_path, "mpnet", "embedding")
    config = json.loads((folder / "config.json").read_text())
    key = shape_key(type("Config", (), config))
    caplog.set_level(logging.WARNING, logger="training.export")  # the tests quiet the root logger
    for int8_ms, warned in ((7.4, True), (5.0, False)):
        caplog.clear()
        memo = {key: {"model": "earlier", "int8": {"blockwise8": {"int8_ms": int8_ms, "fp32_ms": 5.5,
                                                                   "speedup": round(5.5 / int8_ms, 3)}}}}
        entry = export_model(folder, scheme="blockwise8", measured=memo)["onnx"]["model.int8.onnx"]
        assert entry["served_speedup"] == round(5.5 / int8_ms, 3)  # an embedding has no guard: its bare time
        assert ("no int8 scheme that keeps parity is faster than fp32 on this CPU (blockwise8: 0.74x fp32 as served)"
                in caplog.text) is warned


def test_int8_graph_is_quantised(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "mpnet", "embedding")
    export_model(folder, scheme="blockwise8")
    import onnx

    ops = [n.op_type for n in onnx.load(str(folder / "model.int8.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 2 * 6  # q, k, v, o, FFN up, FFN down per layer
    assert ops.count("MatMul") == 2 * 2  # attention scores and context: activations x activations
    assert (folder / "model.int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size


def test_dynamic_int8_quantises_the_chosen_matmuls_with_7_bit_columns(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "mpnet", "embedding")
    export_model(folder, scheme="dynamic-reduce-range-no-ffn-down")
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(folder / "model.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 2 * 5  # q, k, v, o, FFN up per layer
    assert ops.count("MatMul") == 2 * 3  # attention scores and context, and the FFN down-projection kept fp32
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in (n for n in graph.node if n.op_type == "DynamicQuantizeMatMul"):
        q, scale = weights[node.input[1]], weights[node.input[2]]
        assert q.dtype.name == "int8"
        assert q.shape[1] == scale.shape[0]  # one scale per output column
        assert (abs(q.astype(int)).max(axis=0) == 64).all()  # 7-bit: each column's largest weight maps to 64


def test_broken_tolerance_fails_export_and_removes_file(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "bert", "classification")
    with pytest.raises(ExportParityError) as err:  # bare: the guard's tolerances are another key
        export_model(folder, tolerances={"int8": {"max_abs_diff": 1e-12, "label_agreement": 1.0}}, guard=False)
    assert err.value.file == "model.int8.onnx"
    assert err.value.metric == "max_abs_diff"
    assert "model.int8.onnx" in str(err.value)
    assert "1e-12" in str(err.value)
    assert not (folder / "model.int8.onnx").exists()
    assert (folder / "model.onnx").exists()
    entry = json.loads((folder / "manifest.json").read_text())["onnx"]["model.int8.onnx"]
    assert entry["parity"]["ok"] is False
    assert entry["tolerance"]["max_abs_diff"] == 1e-12
    # the default scheme "auto" tried every candidate, fastest first, and recorded each attempt
    order = [c["scheme_name"] for c in entry["candidates"]]
    assert entry["scheme_name"] == order[-1]
    assert [t["scheme_name"] for t in entry["schemes_tried"]] == order[:-1]
    assert all(t["parity"]["ok"] is False and t["parity"]["max_abs_diff"] > 1e-12 for t in entry["schemes_tried"])
    # a maximum already past its limit is final: the earlier candidates were rejected on the first
    # 8 of the 24 items (one alone, then a batch of 7), the last one checked on all of them
    assert [t["parity"]["items"] for t in entry["schemes_tried"]] == [8] * (len(order) - 1)
    assert all("certain after the first 8 of 24 items" in t["parity"]["breach"] for t in entry["schemes_tried"])
    assert entry["parity"]["items"] == 24
    assert not list(folder.glob(".int8-*"))  # the candidates' temporary folder is gone


def test_cli_tolerance_flag_breach_exits_nonzero(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "mpnet", "embedding")
    assert main(["export", str(folder), "--tolerance", "int8.min_cosine=1.5"]) == 1
    assert not (folder / "model.int8.onnx").exists()


def test_plain_hf_folder_exports_to_servable_folder(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "bert", "embedding", manifest=False)
    out = tmp_path / "exported" / "minilm-like"
    assert main(["export", str(folder), "--task", "embedding", "--out", str(out), "--no-int8"]) == 0
    assert not (folder / "manifest.json").exists()
    assert not (folder / "model.onnx").exists()
    spec = read_spec(out)
    assert (spec.name, spec.task) == ("minilm-like", "embedding")
    assert [k for k in spec.kinds if k not in OPENVINO_KINDS] == ["onnx"]  # OpenVINO runs the same file
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == str(folder)
    assert manifest["onnx"]["model.onnx"]["parity"]["ok"]


def test_compare_schemes_prints_every_scheme_and_writes_nothing(tmp_path: Path, capsys) -> None:
    from training.int8 import SCHEMES

    folder = save_tiny(tmp_path, "mpnet", "embedding")
    before = sorted(p.name for p in folder.iterdir())
    assert main(["export", str(folder), "--compare-schemes", "--schemes", "blockwise8,dynamic-per-channel"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| scheme | mean_cosine | min_cosine |")
    rows = {line.split("|")[1].strip(): line for line in table[2:]}
    assert set(rows) == {"blockwise8", "dynamic-per-channel"} <= set(SCHEMES)
    assert float(rows["blockwise8"].split("|")[2]) > 0.99  # mean cosine of the default scheme
    assert sorted(p.name for p in folder.iterdir()) == before


def test_max_length_beyond_positions_is_refused(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "mpnet", "qa")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "max_length": 256}))
    with pytest.raises(ValueError, match="max_length 256 exceeds the 129 positions"):
        export_model(folder)
    assert not (folder / "model.onnx").exists()


def test_failed_fp32_parity_leaves_no_int8_and_reexport_replaces_stale_int8(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, "bert", "qa")
    export_model(folder)
    assert (folder / "model.int8.onnx").exists()
    with pytest.raises(ExportParityError, match="model.onnx: parity max_abs_diff"):
        export_model(folder, tolerances={"fp32": {"max_abs_diff": -1.0}})
    assert not (folder / "model.onnx").exists()
    assert not (folder / "model.int8.onnx").exists()
    assert "model.int8.onnx" not in json.loads((folder / "manifest.json").read_text())["onnx"]


def test_qa_int8_parity_bounds_how_far_span_probabilities_move(tmp_path: Path) -> None:
    """Spans alone can agree on the few parity texts while the start/end distributions drift
    (a dynamic int8 teacher kept 7 of 7 parity spans and 61% of real ones), so QA int8 parity
    also records and bounds the largest move of a window's start or end probability."""
    folder = save_tiny(tmp_path, "bert", "qa")
    assert main(["export", str(folder)]) == 0
    parity = json.loads((folder / "manifest.json").read_text())["onnx"]["model.int8.onnx"]["parity"]
    assert 0.0 < parity["max_prob_diff"] <= 0.1
    for flags in (["--tolerance", "int8-guarded.max_prob_diff=1e-9"],  # as served: on the items left to int8
                  ["--tolerance", "int8.max_prob_diff=1e-9", "--no-int8-guard"]):
        assert main(["export", str(folder), *flags, "--int8-scheme", "blockwise8"]) == 1
        assert not (folder / "model.int8.onnx").exists()
        assert (folder / "model.onnx").exists()


def test_static_qdq_calibrates_on_the_given_texts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import onnx

    folder = save_tiny(tmp_path, "mpnet", "embedding")
    texts = tmp_path / "calibration.tsv"
    texts.write_text("sentence\n" + "".join(f"the film number {i} was a good one\n" for i in range(40)))
    assert main(["export", str(folder), "--int8-scheme", "static-qdq"]) == 2  # no texts: one clear line
    assert "static-qdq sets its scales from calibration texts" in caplog.text
    assert not (folder / "model.onnx").exists()  # refused before any work

    assert main(["export", str(folder), "--int8-scheme", "static-qdq", "--calibration", str(texts)]) == 0
    entry = json.loads((folder / "manifest.json").read_text())["onnx"]["model.int8.onnx"]
    assert entry["scheme_name"] == "static-qdq"
    assert entry["parity"]["ok"]
    assert entry["parity"]["mean_cosine"] > 0.99
    ops = [n.op_type for n in onnx.load(str(folder / "model.int8.onnx")).graph.node]
    # each of the 12 encoder MatMuls reads a quantised activation and a per-channel int8 weight
    assert ops.count("QuantizeLinear") >= 12
    assert ops.count("DequantizeLinear") >= 2 * 12


def test_smooth_dynamic_moves_activation_ranges_into_the_weights(tmp_path: Path) -> None:
    """SmoothQuant divides each encoder MatMul's input channels by s and multiplies the weight's
    rows by s: the fp32 function is unchanged, and the dynamic int8 file built on it passes parity
    with every encoder MatMul reading a smoothed input."""
    import onnx

    from training.int8 import weight_matmuls
    from training.int8_speed import calibration_batches
    from training.smoothing import smooth

    folder = save_tiny(tmp_path, "bert", "classification")
    texts = tmp_path / "calibration.tsv"
    texts.write_text("sentence\n" + "".join(f"a long and winding film, number {i}\n" for i in range(40)))
    assert main(["export", str(folder), "--int8-scheme", "smooth-dynamic"]) == 2  # no texts: refused
    assert main(["export", str(folder), "--int8-scheme", "smooth-dynamic", "--calibration", str(texts)]) == 0
    entry = json.loads((folder / "manifest.json").read_text())["onnx"]["model.int8.onnx"]
    assert entry["scheme_name"] == "smooth-dynamic"
    assert entry["parity"]["ok"]
    graph = onnx.load(str(folder / "model.int8.onnx")).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    quantised = [n for n in graph.node if n.op_type == "DynamicQuantizeMatMul"]
    assert len(quantised) == 2 * 6  # q, k, v, o, FFN up, FFN down per layer
    assert {made_by[n.input[0]] for n in quantised} == {"Mul"}

    config = json.loads((folder / "config.json").read_text())
    roles = weight_matmuls(onnx.load(str(folder / "model.onnx")).graph, config["hidden_size"],
                           config["intermediate_size"])
    batches = calibration_batches(folder, "classification", texts.read_text().splitlines()[1:], 32)
    smooth(folder / "model.onnx", tmp_path / "smoothed.onnx", [n for names in roles.values() for n in names], batches)
    feeds = {k: v for k, v in batches[0].items() if k in {i.name for i in _session(folder / "model.onnx").get_inputs()}}
    before = _session(folder / "model.onnx").run(None, feeds)[0]
    after = _session(tmp_path / "smoothed.onnx").run(None, feeds)[0]
    np.testing.assert_allclose(after, before, atol=1e-4)
    node_count = {name: len(onnx.load(str(path)).graph.node)
                  for name, path in (("before", folder / "model.onnx"), ("after", tmp_path / "smoothed.onnx"))}
    assert node_count["after"] == node_count["before"] + 4 * 2  # a Mul per input: QKV's, o's, FFN up's, down's


def test_a_candidate_is_rejected_on_the_first_items_only_when_no_later_item_could_save_it() -> None:
    from training.parity import final_breaches

    tol = {"label_agreement": 0.95, "max_prob_diff": 0.1}
    # 3 of the first 50 labels changed: all 152 items could still agree at 149/152 = 0.980
    assert final_breaches({"items": 50, "label_agreement": 47 / 50, "max_prob_diff": 0.05}, tol, 152) == []
    # 8 changed: at best 144/152 = 0.947 < 0.95 whatever the other 102 show
    assert final_breaches({"items": 50, "label_agreement": 42 / 50, "max_prob_diff": 0.05}, tol, 152) == [
        ("label_agreement", pytest.approx(144 / 152), 0.95)]
    assert final_breaches({"items": 50, "label_agreement": 1.0, "max_prob_diff": 0.2}, tol, 152) == [
        ("max_prob_diff", 0.2, 0.1)]
    cosines = {"mean_cosine": 0.99, "min_cosine": 0.98}  # a mean can still rise; a minimum cannot
    assert final_breaches({"items": 8, "mean_cosine": 0.5, "min_cosine": 0.99}, cosines, 24) == []
    assert final_breaches({"items": 8, "mean_cosine": 0.999, "min_cosine": 0.9}, cosines, 24) == [
        ("min_cosine", 0.9, 0.98)]
