"""`build-defaults`: the served model set, end to end (train, distil, export, evaluate).

Per task a teacher and its student; each model is built in ``models/.building-<name>`` and
renamed to ``models/<name>`` only once trained, exported and evaluated, so an interrupted build
resumes where it stopped (at export when training had finished) and never leaves a folder that
looks finished. An int8 file that fails parity is dropped (recorded, logged); fp32 must pass. Models already built
and valid are skipped. Wall time per step is logged, written into each manifest (``build``)
and summarised in ``<cache>/build-defaults-<recipe>.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from training.cli import add_command
from training.paths import cache_dir, models_dir
from training.recipes import QARecipe, Recipe, get_recipe

log = logging.getLogger(__name__)
SETS = (("classification", "sst2"), ("qa", "squad"), ("embedding", "embed"))


@dataclass
class Build:
    """Where the build writes and what it has measured so far."""

    models: Path
    recipe_name: str
    overrides: list[str]
    int8: bool = True
    steps: list[dict] = field(default_factory=list)
    pairs: list[str] = field(default_factory=list)  # the pairs built (or found built), in order

    def step(self, model: str, what: str, seconds: float, cpu: float) -> None:
        self.steps.append({"model": model, "step": what, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1)})
        log.info("build-defaults: %s %s took %.1fs wall, %.1fs CPU", model, what, seconds, cpu)


def timed(build: Build, model: str, what: str, fn, *args, **kwargs):
    """Run one step; wall time and this process's CPU time (a shared machine inflates wall)."""
    t0, c0 = time.monotonic(), time.process_time()
    try:
        return fn(*args, **kwargs)
    finally:  # a failed step's time is recorded too
        build.step(model, what, time.monotonic() - t0, time.process_time() - c0)


def eval_target(recipe: Recipe) -> tuple[Path | str, list[int] | None]:
    """The evaluation file (or hub spec) and, for QA, the held-out articles of the training file."""
    from training.tasks.common import data_path

    if isinstance(recipe, QARecipe):
        from training.tasks.qa import heldout_articles

        return data_path(recipe.train_data), heldout_articles(recipe)
    if recipe.train_data == "rotten-tomatoes" and "sst2" in str(recipe.eval_data).lower():
        from training.data import RT_NOTE

        raise ValueError(f"refusing to evaluate on {recipe.eval_data}: {RT_NOTE}")
    return data_path(recipe.eval_data), None


def finish(build: Build, recipe: Recipe, tmp: Path, name: str) -> Path:
    """Export + evaluate the model in ``tmp``, record the build steps, then rename into place."""
    from training.evaluate import evaluate_model
    from training.export import export_model
    from training.manifest import read_manifest, write_manifest
    from training.parity import ExportParityError

    try:
        timed(build, name, "export", export_model, tmp, int8=build.int8)
    except ExportParityError as exc:
        if not exc.file.endswith(".int8.onnx"):
            raise
        # fp32 passed; the failed int8 file was removed and its figures recorded (ok: false)
        log.warning("build-defaults: %s: %s; serving fp32 ONNX only", name, exc)
    path, articles = eval_target(recipe)
    timed(build, name, f"evaluate ({recipe.eval_backend})", evaluate_model, tmp, recipe.eval_backend, path,
          limit=recipe.eval_limit, articles=articles, set_name=recipe.eval_name, threads=recipe.threads)
    manifest = read_manifest(tmp)
    manifest["build"] = {"recipe": build.recipe_name, "steps": [s for s in build.steps if s["model"] == name]}
    write_manifest(tmp, manifest)
    final = build.models / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def build_task(build: Build, task: str, prefix: str) -> None:
    """Teacher then student of one task; either is skipped when already complete."""
    from training.manifest import is_complete
    from training.train import distil_student, train_teacher

    recipe = get_recipe(task, build.recipe_name, overrides_for(task, build.overrides))
    pair = pair_name(prefix, recipe)
    build.pairs.append(pair)
    t_name, s_name = f"{pair}-teacher", f"{pair}-student"
    t_dir, s_dir = build.models / t_name, build.models / s_name
    done = {d: is_complete(d, recipe=recipe.name) for d in (t_dir, s_dir)}
    if not all(done.values()):
        eval_target(recipe)  # a bad evaluation set fails before training, not after; built pairs need no data
    teacher = cached = None
    if not done[t_dir]:
        tmp = build.models / f".building-{t_name}"
        if not trained(tmp):
            teacher, cached = timed(build, t_name, "train", train_teacher, recipe, fresh(tmp), t_name)
        set_pair(tmp, student=s_name, pair=pair)
        finish(build, recipe, tmp, t_name)
    else:
        log.info("build-defaults: %s is built and valid; skipped", t_name)
    if not done[s_dir]:
        tmp = build.models / f".building-{s_name}"
        if not trained(tmp):
            timed(build, s_name, "distil", distil_student, recipe, t_dir, fresh(tmp), s_name, t_name, teacher, cached)
        set_pair(tmp, pair=pair)
        finish(build, recipe, tmp, s_name)
    else:
        log.info("build-defaults: %s is built and valid; skipped", s_name)
    calibrate_cascade(build, recipe, pair, s_dir)


def calibrate_cascade(build: Build, recipe: Recipe, pair: str, student: Path) -> None:
    """The pair's cascade threshold on its validation split, unless already calibrated
    (classification and QA; embeddings have no cascade)."""
    from training.calibrate import run_calibration
    from training.manifest import read_manifest

    manifest = read_manifest(student)
    if recipe.task == "embedding" or manifest.get("cascade") or not manifest.get("validation"):
        return
    timed(build, pair, "calibrate", run_calibration, pair, build.models, None, None, recipe.eval_backend,
          recipe.cascade_tolerance / 100, recipe.calibrate_limit)


def pair_name(prefix: str, recipe: Recipe) -> str:
    """A pair is named for its data and its recipe (`sst2-quick`, `sst2-standard`), and its two
    folders for the pair (`sst2-quick-teacher`): several recipes' pairs live side by side."""
    return f"{prefix}-{recipe.name}"


def overrides_for(task: str, overrides: list[str]) -> list[str]:
    """``task.key=value`` applies to one task; a bare ``key=value`` to every task that has the key."""
    from dataclasses import fields

    from training.recipes import RECIPE_CLASSES

    known = {f.name for f in fields(RECIPE_CLASSES[task])}
    picked = []
    for item in overrides:
        scope, dot, rest = item.partition(".")
        if dot and scope in RECIPE_CLASSES and "=" not in scope:
            picked += [rest] if scope == task else []
        elif item.partition("=")[0] in known:
            picked.append(item)
    return picked


def trained(tmp: Path) -> bool:
    """An interrupted build whose training finished (weights + manifest are written last):
    resume at export instead of training again."""
    if (tmp / "model.safetensors").is_file() and (tmp / "manifest.json").is_file():
        log.info("build-defaults: %s holds a trained model; resuming at export", tmp)
        return True
    return False


def fresh(path: Path) -> Path:
    """A leftover temp folder is an interrupted build: start that model again."""
    if path.exists():
        log.info("build-defaults: removing interrupted build %s", path)
        shutil.rmtree(path)
    return path


def set_pair(model_dir: Path, **fields: str) -> None:
    from training.manifest import update_manifest

    update_manifest(model_dir, **fields)


def summary(build: Build) -> dict:
    """Quality and throughput per model, the student/teacher retention of each pair (with 95%
    intervals), wall time per step."""
    from training.manifest import read_manifest
    from training.retention import retention

    out: dict = {"recipe": build.recipe_name, "steps": build.steps, "models": {}, "retention": {}}
    for pair in build.pairs:
        paths = {role: build.models / f"{pair}-{role}" for role in ("teacher", "student")}
        for path in paths.values():
            if (path / "manifest.json").is_file():
                manifest = read_manifest(path)
                out["models"][path.name] = {"quality": manifest.get("quality"),
                                            "training_time_s": manifest.get("training_time_s")}
        if all(path.name in out["models"] for path in paths.values()):
            out["retention"][pair] = retention(paths["teacher"], paths["student"])
    return out


def run(recipe_name: str, models: Path, tasks: list[str], overrides: list[str], int8: bool = True) -> dict:
    models.mkdir(parents=True, exist_ok=True)
    build = Build(models, recipe_name, overrides, int8)
    started, cpu_started = time.monotonic(), time.process_time()
    for task, prefix in SETS:
        if task in tasks:
            build_task(build, task, prefix)
    report = summary(build)
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["cpu_s"] = round(time.process_time() - cpu_started, 1)
    path = cache_dir() / f"build-defaults-{recipe_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    log.info("build-defaults: done in %.0fs; summary in %s", report["wall_s"], path)
    return report


def _run(args: argparse.Namespace) -> int:
    overrides = (args.set or []) + (["skip_bad=true"] if args.skip_bad else [])
    report = run(args.recipe, args.models, args.tasks, overrides, not args.no_int8)
    from training.retention import format_table

    for pair, rows in report["retention"].items():
        print(format_table(pair, rows) + "\n")
    print(json.dumps({k: report[k] for k in ("wall_s", "cpu_s")}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "build-defaults",
                         "build the served set (sst2, squad, embed: teacher + student each) with ONNX exports, "
                         "evaluations and manifests; skips what is built, resumes after an interruption",
                         "python -m training build-defaults --recipe quick")
    parser.add_argument("--recipe", default="quick",
                        help="quick (<= 15 min on 2 cores) | standard (<= 60 min a task) | full | a JSON recipe file")
    parser.add_argument("--models", type=Path, default=models_dir(),
                        help="model repository (env DISTILSERVE_MODELS_DIR)")
    parser.add_argument("--tasks", nargs="+", default=[t for t, _ in SETS], choices=[t for t, _ in SETS])
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, all tasks")
    parser.add_argument("--no-int8", action="store_true", help="fp32 ONNX only")
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed data rows (counted in log + manifest)")
    parser.set_defaults(func=_run)

