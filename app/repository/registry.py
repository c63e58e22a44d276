"""The model repository as the service sees it: discover folders (manifest or plain Hugging
Face), serve each once per configured backend it has files for, resolve names and aliases.

What one folder holds is read by `inference.modelfolder` (shared with training)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.batcher import Batcher
from app.engine.cascade import Cascade
from app.http.errors import ServiceError
from inference.backends import Backend, available_kinds
from inference.cascade import CONFIDENCES
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
    startup_s: dict[str, float] = field(default_factory=dict)  # seconds per start-up phase (loading.Laps)

    @property
    def labels(self) -> dict[str, str]:
        return metric_labels(self.name, self.spec, self.backend_kind)

    @property
    def role(self) -> str:
        return self.spec.role

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": self.name, "task": s.task, "role": s.role, "backend": self.backend_kind,
            "layers": s.layers, "hidden_size": s.hidden_size, "params": s.params,
            "max_length": s.max_length,
            "labels": [s.labels[k] for k in sorted(s.labels)] if s.labels else None,
            "quality": s.quality, "teacher": s.teacher, "student": s.student, "pair": s.pair,
            "model_workers": self.batcher.config.workers, "model_workers_choice": self.batcher.workers_choice,
            "split_threads": self.batcher.split_threads,
            "int8_guard": self.batcher.guard.threshold if self.batcher.guard else None,
            "startup_s": self.startup_s,
        }


Servable = ServedModel | Cascade  # what /classify, /qa and /compare may run
_ROLES = ("teacher", "student")
_RECIPE_RANK = ("full", "standard", "quick")  # with no setting, the longest-trained pair is a task's default


@dataclass(frozen=True, slots=True)
class Pair:
    """A teacher and its student (either may be missing when its folder failed to load)."""

    name: str
    task: str
    teacher: str | None
    student: str | None
    recipe: str | None

    def describe(self, default: bool) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "teacher": self.teacher, "student": self.student,
                "recipe": self.recipe, "default": default}


class Registry:
    """Name → served model. Besides model names (`sst2-quick-student`, `…@onnx-int8`), a request
    may name a role: `teacher` / `student` resolve within the task's default pair (a setting, else
    the only pair, else the longest-trained one), `<pair>:teacher` / `<pair>:student` within any
    pair; each optionally `@backend`. A task with no pair and one lone model serves that model
    to requests that name none."""

    def __init__(self, models: list[ServedModel], default_pairs: dict[str, str | None] | None = None,
                 thresholds: dict[str, float] | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.pairs = _pairs(models)
        self.default_pairs = {task: self._default_pair(task, (default_pairs or {}).get(task)) for task in _TASKS}
        self.cascades, self.uncalibrated = self._cascades(thresholds or {})

    def resolve_any(self, name: str, task: str) -> ServedModel | Cascade:
        """A model, or a cascade (`cascade`, `<pair>:cascade`, optionally `@backend`)."""
        ref, _, backend = name.partition("@")
        pair, _, role = ref.rpartition(":")
        if role != "cascade":
            return self.resolve(name, task)
        key = f"{pair or self.default_pairs.get(task) or ''}:cascade" + (f"@{backend}" if backend else "")
        if key in self.cascades and self.cascades[key].task == task:
            return self.cascades[key]
        if key in self.uncalibrated:
            raise ServiceError("model_not_found", self.uncalibrated[key], "model")
        known = ", ".join(sorted(c for c, v in self.cascades.items() if v.task == task)) or "none"
        raise ServiceError("model_not_found", f"cascade {name!r} not found for {task}; served: {known}", "model")

    def describe_cascades(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.cascades.values()]

    def _cascades(self, thresholds: dict[str, float]) -> tuple[dict[str, Cascade], dict[str, str]]:
        """A cascade per pair of a classification or QA task and per backend both models are
        served on; one without a threshold (no calibration, no setting) is named, not served."""
        served: dict[str, Cascade] = {}
        missing: dict[str, str] = {}
        for pair in self.pairs.values():
            if pair.task not in CONFIDENCES or pair.student is None or pair.teacher is None:
                continue
            for student in (m for m in self.models.values() if m.spec.name == pair.student):
                teacher = self.models.get(student.name.replace(pair.student, pair.teacher, 1))
                if teacher is None:
                    continue
                name = f"{pair.name}:cascade" + student.name[len(pair.student):]  # "" or "@backend"
                cascade = _cascade(name, pair, student, teacher, thresholds.get(pair.name))
                if cascade is None:
                    missing[name] = (f"cascade {name!r} has no threshold: run `python -m training calibrate "
                                     f"{pair.name} --data <validation file>` or set DISTILSERVE_CASCADE_THRESHOLDS")
                else:
                    served[name] = cascade
        return served, missing

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

    def resolve_default(self, task: str, name: str) -> ServedModel:
        """The model a request that names none gets: the setting's name or alias, or the task's
        only lone model when the task has no pair."""
        lone = [m for m in self.models.values() if m.spec.task == task and m.name == m.spec.name]
        if self.default_pairs.get(task) is None and len(lone) == 1 and self.models.get(name) is None:
            return lone[0]
        return self.resolve(name, task)

    def describe_pairs(self) -> list[dict[str, Any]]:
        return [p.describe(self.default_pairs.get(p.task) == p.name) for p in self.pairs.values()]

    def _alias(self, name: str, task: str) -> ServedModel | None:
        ref, _, backend = name.partition("@")
        pair, _, role = ref.rpartition(":")
        if role not in _ROLES:
            return None
        pair = pair or self.default_pairs.get(task) or ""
        for model in self.models.values():
            s = model.spec
            primary = model.name == s.name
            in_pair = s.pair == pair if pair else True  # no pair for the task: any model of the role
            on_backend = model.backend_kind == backend if backend else primary
            if s.task == task and s.role == role and in_pair and on_backend:
                return model
        return None

    def _default_pair(self, task: str, setting: str | None) -> str | None:
        """The setting when it names a served pair of the task; else the only one, else the one
        of the longest recipe (full > standard > quick > others), ties by name."""
        pairs = sorted((p for p in self.pairs.values() if p.task == task), key=_pair_rank)
        if setting is not None:
            if not any(p.name == setting for p in pairs):
                served = ", ".join(p.name for p in pairs) or "none"
                raise ValueError(f"default_{task}_pair {setting!r} is not a served {task} pair (served: {served})")
            return setting
        return pairs[0].name if pairs else None


_TASKS = ("classification", "qa", "embedding")


def is_cascade(name: str) -> bool:
    """`cascade`, `<pair>:cascade`, either with `@backend`."""
    return name.partition("@")[0].rpartition(":")[2] == "cascade"


def _cascade(name: str, pair: Pair, student: ServedModel, teacher: ServedModel, setting: float | None
             ) -> Cascade | None:
    """The pair's cascade on one backend: the setting's threshold, else the student's calibration."""
    calibration = student.spec.cascade
    threshold = setting if setting is not None else calibration.get("threshold")
    if threshold is None:
        return None
    kind = calibration.get("confidence") or CONFIDENCES[pair.task][0]
    source = "setting" if setting is not None else "calibration"
    return Cascade(name, pair.name, pair.task, student, teacher, float(threshold), kind, calibration, source)


def _pair_rank(pair: Pair) -> tuple[int, str]:
    rank = _RECIPE_RANK.index(pair.recipe) if pair.recipe in _RECIPE_RANK else len(_RECIPE_RANK)
    return rank, pair.name


def _pairs(models: list[ServedModel]) -> dict[str, Pair]:
    """Pairs from the served models' specs (one entry per pair, whatever the backends)."""
    found: dict[str, dict[str, Any]] = {}
    for model in models:
        s = model.spec
        if s.pair is None or s.role not in _ROLES:
            continue
        entry = found.setdefault(s.pair, {"task": s.task, "teacher": None, "student": None, "recipe": s.recipe})
        entry[s.role] = s.name
    return {name: Pair(name, **entry) for name, entry in sorted(found.items())}
