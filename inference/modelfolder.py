"""One model folder, read without loading weights: the manifest (written by training) or the
files of a plain Hugging Face / sentence-transformers folder, as one backend-independent spec.

Both sides read folders through this module: the service to serve them, training to export,
check parity and evaluate them. There is one JSON reader and one safetensors-header parser.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.backends import GUARD_KEYS, ONNX_FILES, available_kinds

_MAX_HEADER = 100_000_000  # bytes: a bigger "header" is not safetensors


def read_json(path: Path) -> dict[str, Any]:
    """A folder's JSON file as a dict; {} when absent. Broken JSON is a ValueError naming the file."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name} is not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def safetensors_header(path: Path) -> dict[str, Any] | None:
    """The tensor table of a safetensors file (8-byte length + JSON), without reading the
    weights; None when the file is absent. A truncated or foreign file is a ValueError."""
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        raw = fh.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if size <= 0 or size > _MAX_HEADER or size + 8 > path.stat().st_size:
            raise ValueError(f"{path.name} has no valid header (truncated or not safetensors)")
        header: dict[str, Any] = json.loads(fh.read(size))
    return header


_TASK_BY_ARCH = (("ForSequenceClassification", "classification"), ("ForQuestionAnswering", "qa"))
_MANIFEST_TASKS = ("classification", "qa", "embedding")


@dataclass(slots=True)
class ModelSpec:
    """Everything the service needs to know about one model folder (backend-independent)."""

    name: str
    path: Path
    task: str
    role: str
    layers: int | None
    hidden_size: int | None
    params: int | None
    max_length: int
    labels: dict[int, str] | None
    problem_type: str | None = None
    pooling: str = "mean"
    normalize: bool = False
    quality: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    student: str | None = None
    kinds: list[str] = field(default_factory=list)
    pair: str | None = None  # the teacher/student pair it belongs to (None: a lone model)
    recipe: str | None = None  # the training recipe's name (quick, standard, full, a file)
    cascade: dict[str, Any] = field(default_factory=dict)  # a student's calibration (training's calibrate)
    # the int8 file's calibrated lead thresholds (inference.guard), per engine that was calibrated
    int8_guards: dict[str, float] = field(default_factory=dict)
    int8_speedup: float | None = None  # the export's fp32 time over its int8 file's as served, on its machine

    def int8_guard(self, kind: str) -> float | None:
        """The guard threshold of int8 kind `kind`: its own engine's calibration, else (OpenVINO
        not calibrated) ONNX Runtime's of the same file; None for fp32 kinds and unguarded files."""
        if kind not in GUARD_KEYS:
            return None
        return self.int8_guards.get(kind, self.int8_guards.get("onnx-int8"))


def _infer_task(config: dict[str, Any]) -> str:
    for arch in config.get("architectures") or []:
        for suffix, task in _TASK_BY_ARCH:
            if arch.endswith(suffix):
                return task
    return "embedding"


def _max_length(folder: Path, config: dict[str, Any]) -> int:
    """Plain folders: sentence-transformers' max_seq_length, else the tokenizer's
    model_max_length, else the position table (minus the 2 RoBERTa-style offsets), capped at 512."""
    st = read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    tok = read_json(folder / "tokenizer_config.json").get("model_max_length")
    pos = config.get("max_position_embeddings")
    for value in (st, tok if isinstance(tok, int) and tok < 100_000 else None, pos and pos - 2):
        if isinstance(value, int) and value > 0:
            return min(value, 512)
    return 512


def _safetensors_params(folder: Path) -> int | None:
    """Count parameters from the safetensors header alone (no weights loaded)."""
    header = safetensors_header(folder / "model.safetensors")
    if header is None:
        return None
    total = 0
    for key, meta in header.items():
        if key != "__metadata__":
            count = 1
            for dim in meta["shape"]:
                count *= dim
            total += count
    return total


def _st_pooling(folder: Path) -> tuple[str, bool]:
    """sentence-transformers layout: pooling mode from 1_Pooling, normalisation from modules."""
    pooling = read_json(folder / "1_Pooling" / "config.json")
    mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
    modules = (folder / "modules.json").read_text() if (folder / "modules.json").is_file() else ""
    return mode, "Normalize" in modules


def _labels(raw: dict[str, Any] | None) -> dict[int, str] | None:
    return {int(k): str(v) for k, v in raw.items()} if raw else None


def read_spec(folder: Path) -> ModelSpec:
    """Build a spec from `manifest.json` if present, else from the HF files of a plain folder."""
    config = read_json(folder / "config.json")
    manifest = read_json(folder / "manifest.json")
    if manifest:
        missing = [k for k in ("name", "task", "role") if not manifest.get(k)]
        if missing or manifest["task"] not in _MANIFEST_TASKS:
            raise ValueError(f"{folder}/manifest.json: missing {missing} or bad task {manifest.get('task')!r}")
    task = manifest.get("task") or _infer_task(config)
    pooling, normalize = _st_pooling(folder)
    int8 = int8_entry(manifest)
    return ModelSpec(
        name=folder.name,
        path=folder,
        task=task,
        role=manifest.get("role") or "model",
        layers=manifest.get("layers") or config.get("num_hidden_layers"),
        hidden_size=manifest.get("hidden_size") or config.get("hidden_size"),
        params=manifest.get("params") or _safetensors_params(folder),
        max_length=int(manifest.get("max_length") or _max_length(folder, config)),
        labels=_labels(manifest.get("labels") or (config.get("id2label") if task == "classification" else None)),
        problem_type=config.get("problem_type"),
        pooling=manifest.get("pooling") or pooling,
        normalize=bool(manifest["normalize"]) if "normalize" in manifest else normalize,
        quality=manifest.get("quality") or {},
        teacher=manifest.get("teacher"),
        student=manifest.get("student"),
        kinds=available_kinds(folder),
        pair=pair_of(folder.name, manifest),
        cascade=manifest.get("cascade") or {},
        int8_guards=_guard_thresholds(int8),
        int8_speedup=_number(int8.get("served_speedup")),
        recipe=(manifest.get("recipe") or {}).get("name") if isinstance(manifest.get("recipe"), dict) else None,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def int8_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a manifest records beside the int8 file (scheme, speed, each engine's guard); {} when none."""
    entry = (manifest.get("onnx") or {}).get(ONNX_FILES["onnx-int8"])
    return entry if isinstance(entry, dict) else {}


def _guard_thresholds(int8: dict[str, Any]) -> dict[str, float]:
    """The calibrated lead thresholds recorded beside an int8 file, by int8 kind (none: no guard)."""
    found = {}
    for kind, key in GUARD_KEYS.items():
        guard = int8.get(key)
        value = guard.get("threshold") if isinstance(guard, dict) else None
        if isinstance(value, int | float) and value > 0:
            found[kind] = float(value)
    return found


def quality_entries(quality: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(set, backend, figures) for every evaluation in a manifest's `quality`: keyed by set, then
    by backend (`{"sst2-dev": {"onnx": {...}, "onnx-int8": {...}}}`); the older shape with one
    entry per set that names its backend inside is read too."""
    entries = []
    for set_name, value in quality.items():
        if not isinstance(value, dict):
            continue
        if "backend" in value:  # one backend per set (manifests before the per-backend keys)
            entries.append((set_name, str(value["backend"]), value))
        else:
            entries += [(set_name, str(b), e) for b, e in value.items() if isinstance(e, dict)]
    return entries


def pair_of(name: str, manifest: dict[str, Any]) -> str | None:
    """The pair a model belongs to: the manifest's `pair`, or, for manifests written before pairs
    were named, the folder name less its `-teacher` / `-student` suffix when the manifest links
    it to its partner. A plain folder (no manifest) belongs to no pair: it is served as a `model`."""
    if manifest.get("pair"):
        return str(manifest["pair"])
    role = manifest.get("role")
    partner = manifest.get("student") if role == "teacher" else manifest.get("teacher") if role == "student" else None
    suffix = f"-{role}"
    return name.removesuffix(suffix) if partner and name.endswith(suffix) else None
