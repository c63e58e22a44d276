"""Which int8 file an export keeps: every scheme asked for (`AUTO_CHAIN` under `auto`) is built
and timed against fp32 on this machine, then checked for parity *as it will be served* and
weighed by what it costs there.

As served: a classification or QA int8 file is served with its guard (`inference.guard`): an
answer whose lead is under the guard's threshold is read again on the fp32 file. So each
candidate's threshold is chosen on the parity items the way `python -m training guard` chooses it
on the validation split (`training.int8_guard.choose`), its near ties take fp32's answers, and
the answers it then gives must agree with fp32's on 99.5% of the items
(`TOLERANCES["int8-guarded"]`). Its cost is its own time plus the share of items read again
times fp32's time. Candidates are checked in order of their bare time; the search stops at the
first whose bare time alone is already over the cost of the best one that passed.
Why: checked bare, the QA quick student rejected blocks of 256 (49 of 55 parity spans kept) for
blocks of 32 with the FFN down-projection in fp32 (guarded 1.07x fp32); blocks of 256 with the
guard kept 300 of 300 report spans at 1.41x fp32 (2026-12-07).

Without the guard (`export --no-int8-guard`, and always for embeddings, which have no answer to
re-read) the bare file is checked (`TOLERANCES["int8"]`) and the first that passes is kept; a
candidate whose first third of items already fails for certain is not run on the rest.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.backends import ONNX_FILES, load_backend
from training.int8_guard import TASKS as GUARDED_TASKS
from training.int8_guard import choose as choose_guard
from training.parity import (
    AGREEMENTS,
    Outputs,
    ParitySet,
    breaches,
    compare,
    final_breaches,
    joined,
    prefix,
    served,
    tolerance_of,
)

log = logging.getLogger(__name__)

FP32_FILE, INT8_FILE = ONNX_FILES["onnx"], ONNX_FILES["onnx-int8"]
Quantise = Callable[..., None]  # (fp32 path, int8 path, scheme=name): export_int8 with config and calibration bound


@dataclass
class Candidate:
    """One int8 scheme's file as checked: its bare outputs, the answers it would serve, their
    parity against fp32 (`ok`, and `breach` when not) and, guarded, its guard and cost."""

    name: str
    speed: dict[str, Any]
    answered: Outputs
    parity: dict[str, Any]
    guard: dict[str, Any] | None = None
    bare: dict[str, Any] | None = None  # guarded: the parity figures of its own answers

    @property
    def cost_ms(self) -> float:
        return float(self.guard["cost_ms"]) if self.guard else float(self.speed["int8_ms"])

    def summary(self) -> dict[str, Any]:
        """Its manifest record among the schemes tried."""
        return {"scheme_name": self.name, "parity": self.parity, "speed": self.speed,
                **({"guard": self.guard, "parity_bare": self.bare} if self.guard else {})}


@dataclass
class Choice:
    """The candidate kept (None: none passed; `checked[-1]` is then the last one, failed), every
    candidate checked, in order, and every candidate's speed."""

    kept: Candidate | None
    checked: list[Candidate]
    speeds: dict[str, dict[str, Any]]
    order: list[str]
    tolerance: dict[str, float]


def choose_int8(out_dir: Path, tmp: Path, quantise: Quantise, spec: Any, parity: tuple[Outputs, ParitySet],
                bench: Callable[[], dict[str, Any]], names: Sequence[str], tolerances: dict | None, memo: dict,
                guard: bool) -> Choice:
    """Build the `names` schemes (in `tmp`), time them on the `bench` batch (or take the order an
    earlier model of this shape measured, from `memo`, and build each when its turn comes),
    check them as above and leave the kept file (else the last one checked) at `INT8_FILE`."""
    guard = guard and spec.task in GUARDED_TASKS
    files, speeds = _speeds(out_dir, tmp, quantise, spec, bench, names, memo)
    order = sorted(names, key=lambda name: speeds[name]["int8_ms"])
    log.info("int8 candidates, fastest first: %s", ", ".join(f"{n} {speeds[n]['speedup']:.2f}x" for n in order))
    tolerance = tolerance_of("int8-guarded" if guard else "int8", spec.task, tolerances)
    kept, checked = None, []
    for i, name in enumerate(order):
        if kept and speeds[name]["int8_ms"] >= kept.cost_ms:
            break
        if name not in files:
            quantise(out_dir / FP32_FILE, tmp / f"{name}.onnx", scheme=name)
        shutil.move(tmp / f"{name}.onnx", out_dir / INT8_FILE)
        screen = not guard and i + 1 < len(order)
        checked.append(_check(out_dir, spec, parity, name, speeds[name], tolerance, guard, screen))
        shutil.move(out_dir / INT8_FILE, tmp / f"{name}.onnx")
        _log(checked[-1], kept)
        if checked[-1].parity["ok"] and (kept is None or checked[-1].cost_ms < kept.cost_ms):
            kept = checked[-1]
    shutil.move(tmp / f"{(kept or checked[-1]).name}.onnx", out_dir / INT8_FILE)
    return Choice(kept, checked, speeds, order, tolerance)


def _speeds(out_dir: Path, tmp: Path, quantise: Quantise, spec: Any, bench: Callable[[], dict[str, Any]],
            names: Sequence[str], memo: dict) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """(schemes built now, each scheme's ms against fp32): measured here in turns on the bench
    batch, or an earlier same-shape model's figures from `memo` (nothing built yet)."""
    from training.int8_speed import speed_figures

    if "int8" in memo and set(memo["int8"]) == set(names):
        return set(), {n: {**f, "measured_on": memo["model"]} for n, f in memo["int8"].items()}
    paths = {name: tmp / f"{name}.onnx" for name in names}
    for name, path in paths.items():
        quantise(out_dir / FP32_FILE, path, scheme=name)
    memo["int8"] = speed_figures(out_dir / FP32_FILE, paths, spec.task, bench())
    return set(names), memo["int8"]


def _check(out_dir: Path, spec: Any, parity: tuple[Outputs, ParitySet], name: str, speed: dict[str, Any],
           tolerance: dict[str, float], guard: bool, screen: bool) -> Candidate:
    """The file at `INT8_FILE` checked as it would be served."""
    reference = parity[0]
    got, failed = _int8_outputs(out_dir, spec, parity, tolerance, screen)
    if failed is not None:
        return Candidate(name, speed, got, failed)
    chosen = _guarded(reference, got, speed) if guard else None
    answered = served(reference, got, chosen["threshold"]) if chosen else got
    figures = compare(spec.task, reference, answered)
    bad = breaches(figures, tolerance)
    verdict = {"ok": not bad, **({"breach": f"{bad[0][0]} {bad[0][1]:.6g} against {bad[0][2]:g}"} if bad else {})}
    bare = compare(spec.task, reference, got) if chosen else None
    return Candidate(name, speed, answered, {**figures, **verdict}, chosen, bare)


def _guarded(reference: Outputs, got: Outputs, speed: dict[str, Any]) -> dict[str, Any]:
    """The guard chosen on the parity items, and the candidate's cost with it."""
    chosen = choose_guard(reference.records, got.records)
    share = float(chosen["rechecked_share"])
    cost = float(speed["int8_ms"]) + share * float(speed["fp32_ms"])
    return {**chosen, "data": {"parity_items": len(got.records)}, "cost_ms": round(cost, 2),
            "served_speedup": round(float(speed["fp32_ms"]) / cost, 3)}


def _int8_outputs(out_dir: Path, spec: Any, parity: tuple[Outputs, ParitySet], tolerance: dict[str, float],
                  screen: bool) -> tuple[Outputs, dict | None]:
    """The int8 file's outputs on the parity items, from one session. With `screen`, about the
    first third of the items run first; when they already fail for certain (`final_breaches`)
    the rest is not run and their failure figures come back too: a failing candidate costs a
    third of a check (the dynamic QA teacher file: 8 of the first 23 spans changed)."""
    reference, items = parity
    backend = load_backend(out_dir, spec.task, "onnx-int8")
    total = items.size(spec.task)
    cut = items.head_size(spec.task) if screen else total
    got = items.run(backend, spec, 0, cut)
    if cut == total:
        return got, None
    figures = compare(spec.task, prefix(reference, got), got)
    bad = final_breaches(figures, tolerance, total)
    if not bad:
        return joined(got, items.run(backend, spec, cut)), None
    metric, value, limit = bad[0]
    bound = "at most " if metric in AGREEMENTS else ""  # the best the whole set could still reach
    return got, {**figures, "ok": False, "of_items": total, "breach": f"{metric} {bound}{value:.6g} against "
                 f"{limit:g}, certain after the first {figures['items']} of {total} items"}


def _log(candidate: Candidate, kept: Candidate | None) -> None:
    if not candidate.parity["ok"]:
        log.warning("int8 scheme %s failed parity (%s)", candidate.name, candidate.parity["breach"])
    elif candidate.guard:
        log.info("int8 scheme %s passes with its guard: %.1f%% of parity items read again in fp32, %.2fx fp32 "
                 "as served%s", candidate.name, 100 * candidate.guard["rechecked_share"],
                 candidate.guard["served_speedup"], f" (best so far {kept.name})" if kept else "")
