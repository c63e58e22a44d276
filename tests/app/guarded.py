"""A one-model repository whose int8 file carries the guard calibrations a test names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def guarded_copy(model_repo: Path, tmp_path: Path, name: str, guards: dict[str, Any]) -> Path:
    """A repository holding model `name` of `model_repo`, its int8 entry holding `guards`
    (manifest keys as `inference.backends.GUARD_KEYS` names them, e.g. `{"guard": {"threshold": 1e9}}`)."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / name, repo / name)
    path = repo / name / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["onnx"] = {"model.int8.onnx": {"precision": "int8", **guards}}
    path.write_text(json.dumps(manifest))
    return repo
