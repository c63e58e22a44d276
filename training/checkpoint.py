"""Resumable training: a run that stops (killed, Ctrl-C, a session's end) continues where it stopped.

On these 2-core machines a standard QA build takes longer than one working session, so a stop
must not cost the work done. Two things are kept under ``<out>/.checkpoint/``:

- the stage's batches once their one-off passes are done (tokenised, the frozen lower layers
  cached, the teacher's outputs): a resumed run skips those passes (QA's frozen-layer pass alone
  is ~20 min here);
- the loop's state every ``DISTILSERVE_CHECKPOINT_S`` seconds (default 300; 0 turns both off) and
  on SIGINT/SIGTERM: the trained parameters, AdamW's moments, the schedule, the step, the
  shuffle order and the RNG states, so the resumed run takes the same steps it would have taken.

Each file carries a fingerprint (stage, recipe, data file, teacher weights); a file that does not
match what is being built is ignored and overwritten. `save_model` replaces ``out`` whole, so the
folder goes once the model is saved.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]
FOLDER = ".checkpoint"
DEFAULT_EVERY_S = 300.0
DEFAULT_CURVE_POINTS = 4


def every_s() -> float:
    """Seconds between loop checkpoints; env DISTILSERVE_CHECKPOINT_S (0: no checkpoints)."""
    raw = os.environ.get("DISTILSERVE_CHECKPOINT_S", str(DEFAULT_EVERY_S))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"DISTILSERVE_CHECKPOINT_S={raw!r}: not a number of seconds") from exc
    if value < 0:
        raise ValueError(f"DISTILSERVE_CHECKPOINT_S={raw!r}: must be >= 0 (0 turns checkpoints off)")
    return value


def curve_points() -> int:
    """Points of the quality-against-training-time curve a loop keeps (at 1/n, 2/n ... of its
    steps; the finished model is the last); env DISTILSERVE_CURVE_POINTS (0 or 1: none)."""
    raw = os.environ.get("DISTILSERVE_CURVE_POINTS", str(DEFAULT_CURVE_POINTS))
    if not raw.isdigit():
        raise ValueError(f"DISTILSERVE_CURVE_POINTS={raw!r}: not a whole number >= 0")
    return int(raw)


def curve_folder(model_name: str) -> Path:
    """Where a model's curve snapshots live: the cache (a model folder is replaced when saved)."""
    from training.paths import cache_dir

    return cache_dir() / "curves" / model_name.removeprefix(".building-")


def file_stamp(path: Path | str) -> str:
    """Size and modification time of a local file (a retrained teacher or edited data changes
    it); a hub spec or a missing file stamps as itself."""
    try:
        stat = Path(path).stat()
    except OSError:
        return str(path)
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def atomic_save(path: Path, value: Any) -> None:
    """torch.save to a temporary name, then rename: a kill mid-write leaves the last good file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(value, partial)
    partial.replace(path)


@dataclass
class Checkpoint:
    """One training stage's resumable state in ``folder`` (None: checkpoints off)."""

    folder: Path | None
    stage: str
    fingerprint: str
    every_s: float = DEFAULT_EVERY_S
    restored: bool = False
    curve: Path | None = None          # where the loop's curve snapshots go (None: no curve)
    points: int = DEFAULT_CURVE_POINTS

    @classmethod
    def at(cls, out: Path, stage: str, recipe: dict[str, Any], *inputs: Path | str) -> Checkpoint:
        """The checkpoint of ``stage`` (teacher, student) of the model built into ``out``;
        ``inputs`` are the files it depends on (data, teacher weights)."""
        seconds = every_s()
        key = json.dumps({"stage": stage, "recipe": recipe, "inputs": [file_stamp(p) for p in inputs]},
                         sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        points = curve_points()
        return cls(Path(out) / FOLDER if seconds > 0 else None, stage, digest, seconds,
                   curve=curve_folder(Path(out).name) if points > 1 else None, points=points)

    def _path(self, what: str) -> Path | None:
        return self.folder / f"{self.stage}-{what}.pt" if self.folder else None

    def _load(self, what: str) -> Any | None:
        path = self._path(what)
        if path is None or not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:  # a torn file from a kill mid-write of an old version
            log.warning("%s: unreadable (%s); starting this part again", path, exc)
            return None
        if stored.get("fingerprint") != self.fingerprint:
            log.info("%s was made for another recipe, data or teacher; ignored", path)
            return None
        return stored["value"]

    def _save(self, what: str, value: Any) -> None:
        path = self._path(what)
        if path is None:
            return
        atomic_save(path, {"fingerprint": self.fingerprint, "value": value})

    def batches(self, make: Callable[[], list[Batch]]) -> list[Batch]:
        """The stage's prepared batches from an earlier run, else ``make()``'s (tokenised only:
        the caller's one-off passes skip batches that hold their outputs already)."""
        batches = self._load("batches")
        self.restored = batches is not None
        if batches is not None:
            log.info("%s: %d prepared batches restored from %s", self.stage, len(batches), self.folder)
            return batches
        return make()

    def keep(self, batches: list[Batch]) -> None:
        """Store the batches once their one-off passes are done (unless they came from here)."""
        if not self.restored:
            self._save("batches", batches)
            self.restored = True

    def due(self, saved_at: float, stopping: bool) -> bool:
        """Time to save the loop's state: the interval since ``saved_at`` passed, or a stop."""
        return self.folder is not None and (stopping or time.monotonic() - saved_at >= self.every_s)

    def loop_state(self) -> dict[str, Any] | None:
        return self._load("loop")

    def save_loop(self, state: dict[str, Any]) -> None:
        self._save("loop", state)
        log.info("%s: checkpoint at step %d saved in %s", self.stage, state["step"], self.folder)

    def curve_marks(self, total: int) -> set[int]:
        """The steps at which the loop keeps a curve snapshot (the end is the saved model)."""
        if self.curve is None:
            return set()
        return {round(total * i / self.points) for i in range(1, self.points)} - {0, total}

    def start_curve(self, resumed: bool) -> None:
        """A fresh run drops an older run's snapshots of this stage; a resumed one keeps its own."""
        if self.curve is not None and not resumed:
            for old in self.curve.glob(f"{self.stage}-step-*.pt"):
                old.unlink()

    def save_curve(self, step: int, total: int, elapsed: float, params: dict[str, torch.Tensor]) -> None:
        """The trained parameters at ``step`` (with the loop seconds so far), for `training curve`."""
        if self.curve is None:
            return
        atomic_save(self.curve / f"{self.stage}-step-{step:07d}.pt",
                    {"step": step, "total": total, "seconds": elapsed, "params": params})
