"""The model repository as the service sees it: discover folders (manifest or plain Hugging
Face), serve each once per configured backend it has files for, resolve names and aliases."""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from app.backends import available_kinds
from app.errors import ServiceError

log = logging.getLogger("distilserve")

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


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _infer_task(config: dict[str, Any]) -> str:
    for arch in config.get("architectures") or []:
        for suffix, task in _TASK_BY_ARCH:
            if arch.endswith(suffix):
                return task
    return "embedding"


def _max_length(folder: Path, config: dict[str, Any]) -> int:
    """Plain folders: sentence-transformers' max_seq_length, else the tokenizer's
    model_max_length, else the position table (minus the 2 RoBERTa-style offsets), capped at 512."""
    st = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    tok = _read_json(folder / "tokenizer_config.json").get("model_max_length")
    pos = config.get("max_position_embeddings")
    for value in (st, tok if isinstance(tok, int) and tok < 100_000 else None, pos and pos - 2):
        if isinstance(value, int) and value > 0:
            return min(value, 512)
    return 512


def _safetensors_params(folder: Path) -> int | None:
    """Count parameters from the safetensors header alone (no weights loaded)."""
    path = folder / "model.safetensors"
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
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
    pooling = _read_json(folder / "1_Pooling" / "config.json")
    mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
    modules = (folder / "modules.json").read_text() if (folder / "modules.json").is_file() else ""
    return mode, "Normalize" in modules


def _labels(raw: dict[str, Any] | None) -> dict[int, str] | None:
    return {int(k): str(v) for k, v in raw.items()} if raw else None


def read_spec(folder: Path) -> ModelSpec:
    """Build a spec from `manifest.json` if present, else from the HF files of a plain folder."""
    config = _read_json(folder / "config.json")
    manifest = _read_json(folder / "manifest.json")
    if manifest:
        missing = [k for k in ("name", "task", "role") if not manifest.get(k)]
        if missing or manifest["task"] not in _MANIFEST_TASKS:
            raise ValueError(f"{folder}/manifest.json: missing {missing} or bad task {manifest.get('task')!r}")
    task = manifest.get("task") or _infer_task(config)
    pooling, normalize = _st_pooling(folder)
    return ModelSpec(
        name=folder.name,
        path=folder,
        task=task,
        role=manifest.get("role") or ("student" if "student" in folder.name else "teacher"),
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
    )


def discover(models_dir: Path, skip: Collection[str] = ()) -> list[ModelSpec]:
    """Every sub-folder with a tokenizer and something to run; others are skipped with a log line
    (as are the `skip` names: folders that failed the start-up checks of app.faults)."""
    specs = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and p.name not in skip):
        if not (folder / "tokenizer.json").is_file():
            log.warning("skipping %s: no tokenizer.json", folder.name)
            continue
        specs.append(read_spec(folder))
    return specs


class HubModelUnavailable(RuntimeError):
    """A configured hub id that cannot be served; the message names the id (the hub's own
    errors, e.g. offline and not cached, do not)."""


def hub_folder(model_id: str) -> Path:
    """Download a hub model's files (torch backend only) and return the local snapshot folder;
    with HF_HUB_OFFLINE=1 the snapshot already in the hub cache (HF_HUB_CACHE) is used."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "1_Pooling/*"]
    try:
        folder = Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as exc:  # unknown id, no hub, offline and not cached: one line naming the id
        raise HubModelUnavailable(f"hub model {model_id!r}: {type(exc).__name__}: {exc}") from exc
    if "torch" not in available_kinds(folder) or not (folder / "tokenizer.json").is_file():
        raise HubModelUnavailable(f"hub model {model_id!r} needs model.safetensors and tokenizer.json to be served")
    return folder


def served_names(spec: ModelSpec, backends: list[str]) -> list[tuple[str, str]]:
    """(served name, backend) pairs: the first configured backend the folder has gets the plain
    name, each further one `name@backend`."""
    kinds = [b for b in backends if b in spec.kinds]
    return [(spec.name if i == 0 else f"{spec.name}@{kind}", kind) for i, kind in enumerate(kinds)]


@dataclass(slots=True)
class ServedModel:
    """One (model, backend) pair with its runtime pieces."""

    name: str
    spec: ModelSpec
    backend_kind: str
    backend: Any = None
    batcher: Any = None
    shadow: Any = None  # students with shadow traffic on: an app.shadow.ShadowLink to the teacher

    @property
    def labels(self) -> dict[str, str]:
        return {"model": self.name, "role": self.spec.role, "backend": self.backend_kind}

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": self.name, "task": s.task, "role": s.role, "backend": self.backend_kind,
            "layers": s.layers, "hidden_size": s.hidden_size, "params": s.params,
            "max_length": s.max_length,
            "labels": [s.labels[k] for k in sorted(s.labels)] if s.labels else None,
            "quality": s.quality, "teacher": s.teacher, "student": s.student,
            "model_workers": self.batcher.config.workers if self.batcher is not None else None,
        }


class Registry:
    """Name → served model; aliases `teacher` / `student` (optionally `@backend`) per task."""

    def __init__(self, models: list[ServedModel]) -> None:
        self.models = {m.name: m for m in models}

    def resolve(self, name: str, task: str) -> ServedModel:
        model = self.models.get(name) or self._alias(name, task)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ServiceError("model_not_found", f"model {name!r} not found; served: {known}", "model")
        if model.spec.task != task:
            raise ServiceError(
                "wrong_task", f"model {model.name!r} serves {model.spec.task}, not {task}", "model"
            )
        return model

    def _alias(self, name: str, task: str) -> ServedModel | None:
        role, _, backend = name.partition("@")
        if role not in ("teacher", "student"):
            return None
        for model in self.models.values():
            s = model.spec
            primary = model.name == s.name
            if s.task == task and s.role == role and (model.backend_kind == backend if backend else primary):
                return model
        return None
