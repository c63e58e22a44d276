"""`build-defaults`: the served model set, end to end (train, distil, export, evaluate).

Per task a teacher and its student; each model is built in ``models/.building-<name>`` and
renamed to ``models/<name>`` only once trained, exported and evaluated, so an interrupted build
resumes where it stopped (at export when training had finished) and never leaves a folder that
looks finished. An int8 file that fails parity is dropped (recorded, logged); fp32 must pass. Models already built
and valid are skipped. Wall time per step is logged, written into each manifest (``build``)
and summarised in ``<cache>/build-defaults-<recipe>.json``.

`build`: the same machinery for one pair from a user's own labelled file: ``<NAME>-teacher`` and
``<NAME>-student`` (pair ``NAME``), evaluated on ``--eval`` or on a test split held out of the
file (``test_rows``, written to the cache like the validation split, never trained on), the
cascade calibrated on the validation split, the retention table printed. A folder is kept only
when this very recipe built it from the same data; anything else is rebuilt.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from training.cli import add_command
from training.data import Columns
from training.paths import cache_dir, models_dir
from training.recipes import ClassificationRecipe, QARecipe, Recipe, get_recipe

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
    command: str = "build-defaults"  # in the log lines
    exact: bool = False  # keep a built folder only when this very recipe built it from the same data (build)
    eval_columns: Columns | None = None  # how the evaluation file is read (build --eval); None: its header
    measured: dict = field(default_factory=dict)  # export speed decisions per model shape, reused by later exports
    validation: dict = field(default_factory=dict)  # evaluations on validation splits (calibrate.run_key): run once

    def step(self, model: str, what: str, seconds: float, cpu: float) -> None:
        self.steps.append({"model": model, "step": what, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1)})
        log.info("%s: %s %s took %.1fs wall, %.1fs CPU", self.command, model, what, seconds, cpu)


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
        timed(build, name, "export", export_model, tmp, int8=build.int8, measured=build.measured)
    except ExportParityError as exc:
        if not exc.file.endswith(".int8.onnx"):
            raise
        # fp32 passed; the failed int8 file was removed and its figures recorded (ok: false)
        log.warning("%s: %s: %s; serving fp32 ONNX only", build.command, name, exc)
    guard_int8(build, recipe, tmp, name)
    path, articles = eval_target(recipe)
    evaluated = timed(build, name, f"evaluate ({recipe.eval_backend})", evaluate_model, tmp, recipe.eval_backend,
                      path, limit=recipe.eval_limit, articles=articles, set_name=recipe.eval_name,
                      threads=recipe.threads, columns=build.eval_columns)
    if (tmp / "model.int8.onnx").is_file():  # the int8 file against fp32 on the same set, item by item
        from training.int8_agreement import measure

        timed(build, name, "int8 agreement", measure, tmp, path, set_name=recipe.eval_name, limit=recipe.eval_limit,
              articles=articles, threads=recipe.threads, columns=build.eval_columns, fp32=evaluated)
    manifest = read_manifest(tmp)
    manifest["build"] = {"recipe": build.recipe_name, "steps": [s for s in build.steps if s["model"] == name]}
    write_manifest(tmp, manifest)
    final = build.models / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def guard_int8(build: Build, recipe: Recipe, tmp: Path, name: str) -> None:
    """Calibrate the int8 file's guard on the validation split (`training.int8_guard`), before
    the report set's evaluations, which then measure the int8 file as it is served."""
    from inference.backends import ONNX_FILES
    from inference.modelfolder import read_spec
    from training.calibrate import run_key, validation_split
    from training.evaluate import data_source, evaluate_model
    from training.int8_guard import TASKS, calibrate
    from training.manifest import read_manifest

    if not (tmp / ONNX_FILES["onnx-int8"]).is_file() or read_spec(tmp).task not in TASKS:
        return
    if not read_manifest(tmp).get("validation"):
        log.warning("%s: %s records no validation split; its int8 file is served unguarded", build.command, name)
        return
    path, articles = validation_split(tmp)
    limit, threads = recipe.calibrate_limit, recipe.threads
    fp32 = timed(build, name, "validation (onnx)", evaluate_model, tmp, "onnx", data_source(path), articles=articles,
                 limit=limit, threads=threads, write=False)
    build.validation[run_key(name, "onnx", path, articles, limit)] = fp32  # the cascade's calibration reuses it
    timed(build, name, "int8 guard", calibrate, tmp, limit=limit, threads=threads, fp32=fp32)


def build_task(build: Build, task: str, prefix: str) -> None:
    """Teacher then student of one task's pair (named for the data and the recipe)."""
    recipe = get_recipe(task, build.recipe_name, overrides_for(task, build.overrides))
    build_pair(build, recipe, pair_name(prefix, recipe))


def build_pair(build: Build, recipe: Recipe, pair: str) -> None:
    """Teacher then student of one pair; either is skipped when already complete, then the
    pair's cascade is calibrated."""
    from training.manifest import is_complete
    from training.train import distil_student, train_teacher

    build.pairs.append(pair)
    t_name, s_name = f"{pair}-teacher", f"{pair}-student"
    t_dir, s_dir = build.models / t_name, build.models / s_name
    done = {d: is_complete(d, recipe=recipe.name) and made_by(build, d, recipe) for d in (t_dir, s_dir)}
    if not all(done.values()):
        eval_target(recipe)  # a bad evaluation set fails before training, not after; built pairs need no data
    teacher = cached = None
    if not done[t_dir]:
        tmp = build.models / f".building-{t_name}"
        if not (made_by(build, tmp, recipe) and trained(tmp)):
            teacher, cached = timed(build, t_name, "train", train_teacher, recipe, fresh(tmp), t_name)
        set_pair(tmp, student=s_name, pair=pair)
        finish(build, recipe, tmp, t_name)
    else:
        log.info("%s: %s is built and valid; skipped", build.command, t_name)
    if not done[s_dir]:
        tmp = build.models / f".building-{s_name}"
        if not (made_by(build, tmp, recipe) and trained(tmp)):
            timed(build, s_name, "distil", distil_student, recipe, t_dir, fresh(tmp), s_name, t_name, teacher, cached)
        set_pair(tmp, pair=pair)
        finish(build, recipe, tmp, s_name)
    else:
        log.info("%s: %s is built and valid; skipped", build.command, s_name)
    calibrate_cascade(build, recipe, pair, s_dir)


def made_by(build: Build, folder: Path, recipe: Recipe) -> bool:
    """build-defaults keeps what its recipe (by name) built; `build` (``exact``) only what this
    very recipe built from the same data (same sha256)."""
    if not build.exact:
        return True
    from training.data import data_sha256
    from training.manifest import read_manifest
    from training.recipes import recipe_dict
    from training.tasks.common import data_path

    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError):
        return False
    data = manifest.get("data") or [{}]
    return (manifest.get("recipe") == recipe_dict(recipe)
            and data[0].get("sha256") == data_sha256(data_path(recipe.train_data)))


def calibrate_cascade(build: Build, recipe: Recipe, pair: str, student: Path) -> None:
    """The pair's cascade threshold on its validation split, unless already calibrated
    (classification and QA; embeddings have no cascade)."""
    from training.calibrate import run_calibration
    from training.manifest import read_manifest

    manifest = read_manifest(student)
    if recipe.task == "embedding" or manifest.get("cascade") or not manifest.get("validation"):
        return
    timed(build, pair, "calibrate", run_calibration, pair, build.models, None, None, recipe.eval_backend,
          recipe.cascade_tolerance / 100, recipe.calibrate_limit, build.validation)


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
        log.info("%s holds a trained model; resuming at export", tmp)
        return True
    return False


def fresh(path: Path) -> Path:
    """A leftover temp folder is an interrupted build: start that model again, from its training
    checkpoint when it holds one (training/checkpoint.py checks that it fits this recipe)."""
    from training.checkpoint import FOLDER

    if (path / FOLDER).is_dir():
        log.info("%s holds a training checkpoint; resuming from it", path)
    elif path.exists():
        log.info("removing interrupted build %s", path)
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
                                            "int8_agreement": manifest.get("int8_agreement"),
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
    return finished(summary(build), f"build-defaults-{recipe_name}", started, cpu_started)


def finished(report: dict[str, Any], name: str, started: float, cpu_started: float) -> dict[str, Any]:
    """A build's summary with its wall and CPU time, written to ``<cache>/<name>.json``."""
    report.update(wall_s=round(time.monotonic() - started, 1), cpu_s=round(time.process_time() - cpu_started, 1))
    path = cache_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    log.info("%s: done in %.0fs; summary in %s", name, report["wall_s"], path)
    return report


def _run(args: argparse.Namespace) -> int:
    overrides = (args.set or []) + (["skip_bad=true"] if args.skip_bad else [])
    report = run(args.recipe, args.models, args.tasks, overrides, not args.no_int8)
    from training.retention import format_table

    for pair, rows in report["retention"].items():  # for a person; stdout stays one JSON document
        print(format_table(pair, rows) + "\n", file=sys.stderr)
    print(json.dumps({k: report[k] for k in ("retention", "models", "wall_s", "cpu_s")}, indent=2))
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
    register_build(subparsers)


# --- build: one pair from a user's own file -------------------------------------------------

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a folder name and a pair the API can address


def user_recipe(args: argparse.Namespace) -> tuple[ClassificationRecipe, Columns | None]:
    """The pair's recipe (train_data = the file, its columns and labels, and as evaluation set
    --eval or the test split held out of the file) and how the evaluation file is read."""
    from training.cli import columns_from_args
    from training.data import load_labelled
    from training.evaluate import set_name_for
    from training.tasks.classification import write_test
    from training.tasks.common import data_path
    from training.train import recipe_from_args

    recipe = recipe_from_args(args)
    if not isinstance(recipe, ClassificationRecipe):
        raise ValueError(f"build takes classification data, not {args.task}")
    if args.eval:
        columns = columns_from_args(args)  # the evaluation file is laid out like the training file
        path = data_path(str(args.eval))
        load_labelled(path, labels=recipe.labels, split="eval", **columns.read_args())  # bad rows fail before training
        return replace(recipe, eval_data=str(path), eval_name=set_name_for(path, "classification", None)), columns
    recipe = replace(recipe, test_rows=recipe.test_rows or recipe.val_rows)
    split = write_test(recipe)
    log.info("build: test split: %d rows of %s held out, never trained on: %s", split["rows"], recipe.train_data,
             split["path"])
    return replace(recipe, eval_data=split["path"], eval_name=f"{args.name}-test"), None  # written with a header


def run_user(args: argparse.Namespace) -> dict[str, Any]:
    """Train, distil, export, evaluate and calibrate the pair ``args.name`` in ``args.models``."""
    from training.manifest import read_manifest

    if not NAME_PATTERN.fullmatch(args.name):
        raise ValueError(f"--name {args.name!r}: letters, digits, '.', '_' and '-' only (a folder and a pair name)")
    started, cpu_started = time.monotonic(), time.process_time()
    recipe, columns = user_recipe(args)
    args.models.mkdir(parents=True, exist_ok=True)
    build = Build(args.models, recipe.name, [], not args.no_int8, command="build", exact=True, eval_columns=columns)
    build_pair(build, recipe, args.name)
    report = summary(build)
    student = read_manifest(args.models / f"{args.name}-student")
    report.update(pair=args.name, labels=list(recipe.labels), cascade=student.get("cascade"),
                  eval={"set": recipe.eval_name, "path": recipe.eval_data})
    return finished(report, f"build-{args.name}", started, cpu_started)


def _run_user(args: argparse.Namespace) -> int:
    from training.retention import format_table

    report = run_user(args)
    print(format_table(report["pair"], report["retention"].get(report["pair"], [])) + "\n")
    cascade = report["cascade"]
    if cascade:
        print(f"cascade: {cascade['confidence']} threshold {cascade['threshold']:.4g} on the validation split "
              f"({cascade['items']} items): {100 * cascade['escalation_rate']:.0f}% of items go to the teacher, "
              f"accuracy {cascade['cascade_quality']:.4g} (student {cascade['student_quality']:.4g}, "
              f"teacher {cascade['teacher_quality']:.4g})")
    models = args.models
    print(f"pair {report['pair']}: {models / (report['pair'] + '-teacher')}, {models / (report['pair'] + '-student')}"
          f" (labels: {', '.join(report['labels'])}); the service serves it on its next start "
          f"(models_dir {models})")
    print(json.dumps({k: report[k] for k in ("wall_s", "cpu_s")}))
    return 0


def register_build(subparsers: argparse._SubParsersAction) -> None:
    from training.train import add_label_options

    parser = add_command(subparsers, "build",
                         "one served pair from your own labelled file: train the teacher, distil the student, "
                         "export both (parity-checked), evaluate both (on --eval, or on a test split held out of "
                         "--data), calibrate the cascade and print the student/teacher retention",
                         "python -m training build --task classification --data tickets.csv --no-header "
                         "--name tickets --recipe quick")
    parser.add_argument("--task", required=True, choices=("classification",))
    parser.add_argument("--data", required=True, help="labelled TSV/CSV/JSONL (text[,text_pair],label), or a hub "
                        "dataset hf:<dataset>[:<config>][@<split>]")
    parser.add_argument("--eval", help="evaluation file, read like --data (default: a test split held out of "
                        "--data, test_rows, at most a tenth)")
    parser.add_argument("--name", required=True, help="pair name: folders <NAME>-teacher and <NAME>-student")
    parser.add_argument("--recipe", default="quick", help="quick | standard | full | a JSON recipe file")
    parser.add_argument("--models", type=Path, default=models_dir(),
                        help="model repository (env DISTILSERVE_MODELS_DIR)")
    parser.add_argument("--base", help="pretrained weights: all-mpnet-base-v2 (default), an HF folder or hub id")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field (repeatable)")
    parser.add_argument("--no-int8", action="store_true", help="fp32 ONNX only")
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed data rows (counted in log + manifest)")
    add_label_options(parser)
    parser.set_defaults(func=_run_user)

