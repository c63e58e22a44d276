"""`python -m training calibrate`: a pair's cascade threshold from a validation file, recorded
in both manifests and served as the pair's cascade."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.settings import Settings
from tests.conftest import serve
from tests.training.test_cli import cli, manifest


@pytest.mark.asyncio(loop_scope="session")
async def test_calibrate_picks_the_least_escalation_within_tolerance_and_the_service_serves_it(
        model_repo: Path, tiny_data: dict[str, Path], tmp_path: Path) -> None:
    models = tmp_path / "models"
    for role in ("teacher", "student"):
        shutil.copytree(model_repo / f"sst2-{role}", models / f"sst2-{role}")
    curve = tmp_path / "curve.json"
    cli("calibrate", "sst2", "--models", str(models), "--data", str(tiny_data["sst2_dev"]), "--curve", str(curve),
        cache=tmp_path)
    recorded = manifest(models / "sst2-student")["cascade"]
    assert manifest(models / "sst2-teacher")["cascade"] == recorded
    assert recorded["items"] == 24
    assert recorded["confidence"] in ("top_probability", "margin")
    points = json.loads(curve.read_text())
    within = [p for p in points if p["quality"] >= recorded["teacher_quality"] - 0.003]
    # the curve is the chosen measure's: its pick is that curve's least escalation within tolerance
    assert recorded["escalation_rate"] == pytest.approx(min(p["escalation_rate"] for p in within))
    assert recorded["cascade_quality"] >= recorded["teacher_quality"] - 0.003
    assert recorded["data"]["path"] == str(tiny_data["sst2_dev"])

    async with serve(Settings(models_dir=models, backends=["onnx"], threads=1)) as client:
        cascades = (await client.get("/models")).json()["cascades"]
        answered = (await client.post("/classify", json={"inputs": ["a fine film"], "model": "cascade"})).json()
    assert [(c["name"], c["threshold"], c["threshold_source"]) for c in cascades] == [
        ("sst2:cascade", recorded["threshold"], "calibration")]
    assert answered["items"][0]["answered_by"] in ("student", "teacher")


def test_calibrate_names_a_missing_pair(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    done = cli("calibrate", "nope", "--models", str(tmp_path / "models"), "--data", "x.tsv", cache=tmp_path,
               check=False)
    assert done.returncode == 2
    assert "pair 'nope'" in done.stderr
