"""Start-up faults: check every model folder before anything is loaded, so that a corrupted
ONNX file, a missing tokenizer or a manifest that disagrees with its weights is reported as
one clear line naming the model and its path, not as a stack trace from deep in a runtime.

`on_model_error = "fail"` turns any fault into a failed start-up (uvicorn exits non-zero);
`"skip"` serves the other models and /ready answers 503 naming the missing ones.
The checks are cheap (headers and JSON only; no weights or sessions are loaded)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tokenizers import Tokenizer

from inference.backends import ONNX_FILES, TORCH_WEIGHT_FILES
from inference.modelfolder import read_json, safetensors_header

log = logging.getLogger("distilserve")
_MODEL_FILES = ("manifest.json", "config.json", *ONNX_FILES.values(), *TORCH_WEIGHT_FILES)
_LAYER = re.compile(r"\.layer\.(\d+)\.")
_HEADS = ("classifier.weight", "classifier.out_proj.weight")


@dataclass(frozen=True, slots=True)
class ModelFault:
    """What is wrong with one model folder. `problem` names files relative to the folder, so it
    can be shown to clients (/ready) without revealing the server's paths; logs get the path."""

    name: str
    path: Path
    problem: str

    def __str__(self) -> str:
        return f"model {self.name!r} at {self.path}: {self.problem}"


class StartupFault(RuntimeError):
    """Raised at start-up in `fail` mode: the lifespan fails and the server refuses to start."""

    def __init__(self, faults: list[ModelFault]) -> None:
        super().__init__("refusing to start: " + "; ".join(str(f) for f in faults))
        self.faults = faults


def check_repository(models_dir: Path, backends: list[str], on_error: str) -> list[ModelFault]:
    """Faults of every model folder; raises `StartupFault` in `fail` mode if there are any."""
    folders = sorted(p for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    faults = [f for folder in folders if (f := check_folder(folder, backends)) is not None]
    for fault in faults:
        log.error("model fault: %s", fault, extra={"fields": {"model": fault.name, "path": str(fault.path)}})
    if faults and on_error == "fail":
        raise StartupFault(faults)
    return faults


def check_folder(folder: Path, backends: list[str]) -> ModelFault | None:
    """The first problem found in one folder; folders with no model file at all are not models."""
    if not any((folder / f).is_file() for f in _MODEL_FILES):
        return None
    try:
        problem = _problem(folder, backends)
    except (OSError, ValueError) as exc:  # unreadable JSON / files: still one clear line
        problem = f"unreadable model files: {type(exc).__name__}: {str(exc).replace(str(folder), '.')}"
    return ModelFault(folder.name, folder, problem) if problem else None


def _problem(folder: Path, backends: list[str]) -> str | None:
    return _tokenizer_problem(folder) or _manifest_problem(folder) or _onnx_problem(folder, backends)


def _tokenizer_problem(folder: Path) -> str | None:
    if not (folder / "tokenizer.json").is_file():
        return "tokenizer.json is missing"
    try:
        Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exceptions
        return f"tokenizer.json cannot be loaded ({str(exc)[:200]})"
    return None


def declared_shape(folder: Path) -> dict[str, dict[str, int | None]]:
    """layers / hidden size / label count as the manifest, config.json and the weights say."""
    manifest, config = read_json(folder / "manifest.json"), read_json(folder / "config.json")
    labels = manifest.get("labels")
    id2label = config.get("id2label")
    return {
        "manifest.json": {"layers": manifest.get("layers"), "hidden_size": manifest.get("hidden_size"),
                          "labels": len(labels) if isinstance(labels, dict) else None},
        "config.json": {"layers": config.get("num_hidden_layers") or config.get("n_layers"),
                        "hidden_size": config.get("hidden_size") or config.get("dim"),
                        "labels": len(id2label) if isinstance(id2label, dict) else config.get("num_labels")},
        "model.safetensors": _weights_shape(folder / "model.safetensors"),
    }


def _manifest_problem(folder: Path) -> str | None:
    """Any two sources that both state a dimension must agree on it."""
    shapes = declared_shape(folder)
    manifest = read_json(folder / "manifest.json")
    task = manifest.get("task")
    for key in ("layers", "hidden_size", "labels"):
        if key == "labels" and task not in (None, "classification"):
            continue
        stated = {src: dims[key] for src, dims in shapes.items() if dims.get(key) is not None}
        if len(set(stated.values())) > 1:
            return f"{key} disagree: " + ", ".join(f"{src} says {v}" for src, v in stated.items())
    return _task_problem(task, read_json(folder / "config.json"))


def _task_problem(task: str | None, config: dict[str, Any]) -> str | None:
    archs = config.get("architectures") or []
    expected = {"classification": "ForSequenceClassification", "qa": "ForQuestionAnswering"}.get(task or "")
    if expected and archs and not any(a.endswith(expected) for a in archs):
        return f"manifest.json task {task!r} does not match config.json architectures {archs}"
    return None


def _weights_shape(path: Path) -> dict[str, int | None]:
    """Dimensions from the safetensors header alone (8-byte length + JSON): nothing is loaded."""
    header = safetensors_header(path)
    if header is None:
        return {}
    layers = {int(m.group(1)) for key in header if (m := _LAYER.search(key))}
    hidden = next((meta["shape"][1] for key, meta in header.items() if key.endswith("word_embeddings.weight")), None)
    labels = next((meta["shape"][0] for key, meta in header.items() if key in _HEADS), None)
    return {"layers": len(layers) or None, "hidden_size": hidden, "labels": labels}


def _onnx_problem(folder: Path, backends: list[str]) -> str | None:
    for kind in backends:
        name = ONNX_FILES.get(kind)
        if name and (folder / name).is_file():
            try:
                with (folder / name).open("rb") as fh:
                    problem = onnx_structure_problem(fh, (folder / name).stat().st_size)
            except ValueError as exc:
                problem = str(exc)
            if problem:
                return f"{name} is corrupted: {problem}"
    return None


def onnx_structure_problem(fh: BinaryIO, size: int) -> str | None:
    """Walk the top level of the ONNX protobuf (ModelProto): every field must have a valid
    wire type and fit in the file, and the graph (field 7) must be there. A truncated, empty
    or overwritten file fails here in microseconds; the graph's bytes are skipped, not read."""
    seen: set[int] = set()
    while fh.tell() < size:
        key = _varint(fh)
        field, wire = key >> 3, key & 7
        if field == 0 or wire not in (0, 1, 2, 5):
            return f"invalid protobuf field at byte {fh.tell()}"
        skip = {0: 0, 1: 8, 5: 4}.get(wire)
        if wire == 0:
            _varint(fh)
        else:
            skip = _varint(fh) if wire == 2 else skip
            if fh.tell() + (skip or 0) > size:
                return f"field {field} runs past the end of the file (truncated?)"
            fh.seek(skip or 0, 1)
        seen.add(field)
    return None if 7 in seen else "no graph in the file"


def _varint(fh: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise ValueError("ONNX file ends inside a field (truncated)")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("ONNX file has an over-long varint (not protobuf)")


def public_text(message: str, models_dir: Path) -> str:
    """A load error as clients may see it (/ready, 503 bodies): the server's paths are cut to
    the model repository's relative names."""
    root = str(models_dir.resolve())
    return message.replace(root, "models").replace(str(models_dir), "models")


def load_fault(name: str, path: Path, exc: BaseException) -> ModelFault:
    """A model that passed the checks but failed to load (e.g. a runtime rejects its graph)."""
    text = public_text(f"{type(exc).__name__}: {exc}", path.parent)
    return ModelFault(name, path, f"failed to load: {text[:300]}")
