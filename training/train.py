"""`train` (make a task teacher) and `distil` (make its student) commands.

Both take a task, a recipe (``quick``/``full`` or a JSON file) and ``--set key=value``
overrides; the recipe is recorded whole in the model's manifest.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.cli import add_command
from training.recipes import RECIPE_CLASSES, Recipe, get_recipe

log = logging.getLogger(__name__)


def task_module(task: str):
    """The recipe module of a task (imported lazily: torch + transformers are heavy)."""
    from training.tasks import classification, embedding, qa

    return {"classification": classification, "qa": qa, "embedding": embedding}[task]


def train_teacher(recipe: Recipe, out: Path, name: str):
    """Dispatch: classification/qa fine-tune; embedding saves the pretrained encoder as teacher."""
    module = task_module(recipe.task)
    if recipe.task == "embedding":
        return module.save_teacher(recipe, out, name), None
    return module.train_teacher(recipe, out, name)


def distil_student(recipe: Recipe, teacher_dir: Path, out: Path, name: str, teacher_name: str,
                   teacher=None, cached=None):
    module = task_module(recipe.task)
    if recipe.task == "embedding":
        return module.distil_student(recipe, teacher_dir, out, name, teacher_name, teacher)
    return module.distil_student(recipe, teacher_dir, out, name, teacher_name, teacher, cached)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    overrides = list(args.set or [])
    for flag, field in (("data", "train_data"), ("base", "base"), ("layer_map", "layer_map")):
        if getattr(args, flag, None):
            overrides.append(f"{field}={getattr(args, flag)}")
    if args.skip_bad:
        overrides.append("skip_bad=true")
    return get_recipe(args.task, args.recipe, overrides)


def _train(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    train_teacher(recipe, args.out, args.name or args.out.name)
    print(f"teacher saved to {args.out}")
    return 0


def _distil(args: argparse.Namespace) -> int:
    from training.manifest import read_manifest, update_manifest

    recipe = recipe_from_args(args)
    teacher_name = read_manifest(args.teacher, required=True).get("name", args.teacher.name)
    name = args.name or args.out.name
    distil_student(recipe, args.teacher, args.out, name, teacher_name)
    update_manifest(args.teacher, student=name)
    print(f"student saved to {args.out}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=sorted(RECIPE_CLASSES))
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--name", help="model name in the manifest (default: the folder name)")
    parser.add_argument("--recipe", default="quick", help="quick | full | path to a JSON recipe")
    parser.add_argument("--data", help="training data file (TSV/CSV/JSONL, SQuAD JSON, or rotten-tomatoes), "
                        "or a hub dataset hf:<dataset>[:<config>][@<split>]")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field (repeatable)")
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed rows (counted in log + manifest)")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = add_command(subparsers, "train", "fine-tune a task teacher from pretrained weights",
                        "python -m training train --task classification --data ../shared/data/sst2/train.tsv "
                        "--out models/my-teacher --set teacher_rows=2000")
    _common(train)
    train.add_argument("--base", help="pretrained weights: all-mpnet-base-v2 (default), an HF folder or hub id")
    train.set_defaults(func=_train)
    distil = add_command(subparsers, "distil", "distil a 6-layer student from a trained teacher folder",
                         "python -m training distil --task classification --teacher models/my-teacher "
                         "--data ../shared/data/sst2/train.tsv --out models/my-student --layer-map 0,2,4,6,8,10")
    _common(distil)
    distil.add_argument("--teacher", required=True, type=Path, help="teacher model folder")
    distil.add_argument("--layer-map", help="teacher layer per student layer, e.g. 0,2,4,6,8,10 (default)")
    distil.set_defaults(func=_distil)
