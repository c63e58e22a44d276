"""`python -m benchmarks.bench_engines` on a tiny model: every engine's model call timed against
ONNX Runtime fp32, with how close its output is (the same file on OpenVINO: the same numbers)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench_engines import main


def test_every_engine_of_the_folder_is_timed_against_onnx(model_repo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rows.json"
    assert main(["--model-dir", str(model_repo / "sst2-student"), "--batch", "4", "--tokens", "16",
                 "--rounds", "2", "--threads", "1", "--out", str(out)]) == 0
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["onnx", "onnx-int8", "openvino", "openvino-int8", "openvino-bf16"]
    assert rows["onnx"]["speedup"] == 1.0
    assert rows["onnx"]["max_abs_diff"] == 0.0
    assert rows["openvino"]["argmax_same"] == 1.0  # the same fp32 file, another engine
    assert rows["openvino"]["min_cosine"] > 0.99999
    assert all(r["median_ms"] > 0 for r in rows.values())
    assert "| openvino-int8 |" in capsys.readouterr().out
