"""The model repository as the service sees it: discover folders (manifest or plain Hugging
Face), serve each once per configured backend it has files for, resolve names and aliases.

What one folder holds is read by `inference.modelfolder` (shared with training)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.batcher import Batcher
from app.http.errors import ServiceError
from inference.backends import Backend, available_kinds
from inference.modelfolder import ModelSpec, read_spec

if TYPE_CHECKING:
    from app.shadow.link import ShadowLink

log = logging.getLogger("distilserve")

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


def metric_labels(name: str, spec: ModelSpec, backend_kind: str) -> dict[str, str]:
    """The labels every per-model metric series carries."""
    return {"model": name, "role": spec.role, "backend": backend_kind}


@dataclass(slots=True)
class ServedModel:
    """One (model, backend) pair with its runtime pieces: a route reaches `batcher.run`, the
    batcher reaches `backend.forward`."""

    name: str
    spec: ModelSpec
    backend_kind: str
    backend: Backend
    batcher: Batcher
    shadow: ShadowLink | None = None  # students with shadow traffic on: the link to their teacher

    @property
    def labels(self) -> dict[str, str]:
        return metric_labels(self.name, self.spec, self.backend_kind)

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": self.name, "task": s.task, "role": s.role, "backend": self.backend_kind,
            "layers": s.layers, "hidden_size": s.hidden_size, "params": s.params,
            "max_length": s.max_length,
            "labels": [s.labels[k] for k in sorted(s.labels)] if s.labels else None,
            "quality": s.quality, "teacher": s.teacher, "student": s.student,
            "model_workers": self.batcher.config.workers,
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
