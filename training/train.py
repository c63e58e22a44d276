"""`train` (make a task teacher) and `distil` (make its student) commands.

Both take a task, a recipe (``quick``/``full`` or a JSON file) and ``--set key=value``
overrides; the recipe is recorded whole in the model's manifest.

A user's own classification file (``--data`` that is not the recipes' SST-2) is read with the
column options (``--text-column`` ..., ``--no-header``, recorded in the recipe); its labels are
the sorted distinct values of its label column unless given (``--labels``; see
`inferred_labels`: a file labelled with the recipe's names or class ids, e.g. 0/1, keeps
negative/positive), and the SST-2 filter ``min_words`` is 0 unless set.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.cli import add_command, add_data_options
from training.recipes import NAMED, RECIPE_CLASSES, ClassificationRecipe, Recipe, get_recipe

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


COLUMN_FLAGS = (("text_column", "text_column"), ("pair_column", "pair_column"), ("label_column", "label_column"))


def recipe_from_args(args: argparse.Namespace, labels: Sequence[str] | None = None) -> Recipe:
    """The recipe of the command line: --recipe, --set, the flags for recipe fields, and for a
    user's --data the defaults of `user_data_defaults`; ``labels`` (a teacher's) unless given."""
    overrides = list(args.set or [])
    for flag, field in (("data", "train_data"), ("base", "base"), ("layer_map", "layer_map")):
        if getattr(args, flag, None):
            overrides.append(f"{field}={getattr(args, flag)}")
    if args.skip_bad:
        overrides.append("skip_bad=true")
    recipe = get_recipe(args.task, args.recipe, overrides)
    given = given_fields(args.task, args.recipe, overrides)
    changes: dict[str, Any] = {field: getattr(args, flag) for flag, field in COLUMN_FLAGS
                               if getattr(args, flag, None) is not None}
    if getattr(args, "no_header", False):
        changes["header"] = False
    if getattr(args, "labels", None):
        changes["labels"] = tuple(part.strip() for part in args.labels.split(",") if part.strip())
    elif labels and "labels" not in given and isinstance(recipe, ClassificationRecipe):
        changes["labels"] = tuple(labels)
    if changes and not isinstance(recipe, ClassificationRecipe):
        raise ValueError(f"--labels and the column options are for classification data, not {args.task}")
    recipe = replace(recipe, **changes)
    given |= set(changes)
    return user_data_defaults(recipe, given) if getattr(args, "data", None) else recipe


def given_fields(task: str, recipe_name: str, overrides: list[str]) -> set[str]:
    """The fields the user set: ``--set``/flag overrides and the fields of a JSON recipe file."""
    given = {item.partition("=")[0] for item in overrides}
    if recipe_name not in NAMED:
        data = json.loads(Path(recipe_name).read_text())
        given |= set(data.get(task, data))
    return given


def sst2_data(train_data: str) -> bool:
    """The recipes' own sentiment data (SST-2, its hub copy, Rotten Tomatoes), for which the
    min_words filter and the negative/positive labels are made."""
    from training.data import is_hub_spec
    from training.tasks.common import data_path

    default = ClassificationRecipe.train_data
    if train_data in (default, "rotten-tomatoes") or (is_hub_spec(train_data) and "sst2" in train_data.lower()):
        return True
    try:
        return Path(data_path(train_data)).resolve() == Path(data_path(default)).resolve()
    except FileNotFoundError:  # no SST-2 here (or no such file: reading it says so)
        return False


def inferred_labels(values: Sequence[str], labels: Sequence[str]) -> tuple[str, ...] | None:
    """The class names of a file whose label column holds ``values`` (sorted distinct), or None
    to keep the recipe's ``labels``: a file labelled with the recipe's names or class ids (0/1 of
    negative/positive) is the recipe's labelling, and so is one that mixes some of them with
    other words ('1' and 'perhaps': a typo, reported as an unknown label on its line); integer
    labels beyond the recipe's ids (0, 1, 2) and any other names are the file's own classes."""
    ids = {str(i) for i in range(len(labels))}
    known = set(labels) | ids
    if set(values) <= known:
        return None
    integers = all(v.lstrip("-").isdigit() for v in values)
    if not integers and set(values) & known:
        return None
    return tuple(values)


def user_data_defaults(recipe: Recipe, given: set[str]) -> Recipe:
    """A user's own classification file: min_words 0 (SST-2's phrase filter) and labels inferred
    from the file (`inferred_labels`), each unless given."""
    if not isinstance(recipe, ClassificationRecipe) or sst2_data(recipe.train_data):
        return recipe
    from training.data import Columns, label_values
    from training.tasks.common import data_path

    changes: dict[str, Any] = {}
    if "min_words" not in given and recipe.min_words:
        log.info("%s is not SST-2: min_words=0 (no %d-word filter; --set min_words=N to filter)",
                 recipe.train_data, recipe.min_words)
        changes["min_words"] = 0
    if "labels" not in given:
        path = data_path(recipe.train_data)
        values = label_values(path, **Columns.of(recipe).read_args())
        if inferred_labels(values, recipe.labels):
            if len(values) < 2:
                raise ValueError(f"{path}: one label ({values[0]!r}) in its label column; a classifier needs two")
            log.info("labels inferred from %s: %s (class ids in this order)", path, ", ".join(values))
            changes["labels"] = tuple(values)
        else:
            log.info("labels of %s: the recipe's %s (its labels are those names or their ids; --labels to name "
                     "others)", path, ", ".join(recipe.labels))
    return replace(recipe, **changes)


def _train(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    train_teacher(recipe, args.out, args.name or args.out.name)
    print(f"teacher saved to {args.out}")
    return 0


def _distil(args: argparse.Namespace) -> int:
    from training.manifest import read_manifest, update_manifest

    teacher = read_manifest(args.teacher, required=True)
    teacher_labels = [name for _, name in sorted((int(i), name) for i, name in (teacher.get("labels") or {}).items())]
    recipe = recipe_from_args(args, labels=teacher_labels)  # the teacher's labels unless given
    teacher_name = teacher.get("name", args.teacher.name)
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
    add_label_options(parser)


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """--labels and the column options of a user's classification file (train, distil, build)."""
    parser.add_argument("--labels", help="class names in class-id order, comma-separated (default for a user's "
                        "file: the sorted distinct values of its label column)")
    add_data_options(parser)


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
