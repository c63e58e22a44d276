"""Recipes: every option that shapes a model, as data, so a manifest can record it whole.

A recipe is a dataclass per task; ``quick`` fits the 15-minute CPU budget of build-defaults,
``full`` trains longer for quality. A JSON file or ``--set key=value`` flags override fields.
Data paths are relative to the data directory setting unless absolute.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Common:
    """Options every task shares."""

    name: str = "quick"
    base: str = "all-mpnet-base-v2"       # pretrained weights: cache name, HF folder or hub id
    seed: int = 0
    threads: int = 2
    precision: str = "fp32"               # fp32 | bf16 | auto (bf16 CPU autocast where native) for training
    layer_map: str | None = None          # student layers from teacher layers; None = 0,2,4,...
    max_length: int = 64                  # tokens per training item (short: SST-2/STS-B are short)
    serve_max_length: int | None = 128    # manifest max_length the service enforces (None: max_length)
    batch_size: int = 32
    eval_backend: str = "onnx"            # backend build-defaults evaluates with
    eval_limit: int | None = None         # rows evaluated (None = the whole set)
    teacher_train_top: int = 2            # teacher layers fine-tuned (lower ones frozen + cached)
    teacher_epochs: float = 2.0
    teacher_lr: float = 1e-4
    teacher_max_s: float | None = None    # hard time budget for the teacher loop
    student_train_top: int = 3            # student layers trained (lower ones frozen + cached)
    student_epochs: float = 2.0
    student_lr: float = 1e-4
    student_max_s: float | None = None
    temperature: float = 2.0
    alpha_kd: float = 1.0
    alpha_ce: float = 0.5
    alpha_cos: float = 0.0
    skip_bad: bool = False


@dataclass(frozen=True)
class ClassificationRecipe(Common):
    task: str = "classification"
    train_data: str = "sst2/train.tsv"
    eval_data: str = "sst2/dev.tsv"
    eval_name: str = "sst2-dev"
    labels: tuple[str, ...] = ("negative", "positive")
    teacher_rows: int = 3000              # labelled rows the teacher is fine-tuned on
    student_rows: int = 4500              # rows the student is distilled on (teacher's + more)
    min_words: int = 5                    # SST-2 train holds phrases; dev holds sentences
    teacher_train_top: int = 3
    alpha_cos: float = 0.2


@dataclass(frozen=True)
class QARecipe(Common):
    task: str = "qa"
    train_data: str = "squad/squad-v1.1-dev-articles-00-37.json"
    eval_name: str = "squad-heldout"      # evaluated on the held-out articles of train_data
    heldout_articles: int = 8             # the last N articles: never trained on
    max_length: int = 192                 # tokens per training window (question + context piece)
    doc_stride: int = 64                  # overlap between training windows of a long context
    batch_size: int = 16
    serve_max_length: int | None = 256    # window length the service (and evaluate) uses
    teacher_rows: int = 400               # training windows (each holds its answer)
    student_rows: int = 800               # teacher's windows + more, soft-labelled by the teacher
    teacher_train_top: int = 3            # lr 5e-4 on the top 3: F1 34.8 vs 16.2 (lr 2e-4, top 2), same budget
    student_train_top: int = 2
    teacher_lr: float = 5e-4              # the span head starts from scratch: it needs a high rate
    student_lr: float = 1e-3              # measured: 36.0 F1 vs 25.3 at 2e-4 (600 windows, 2 epochs)


@dataclass(frozen=True)
class EmbeddingRecipe(Common):
    task: str = "embedding"
    train_data: str = "stsb/train.tsv"    # sentences only: distillation needs no labels
    eval_data: str = "stsb/dev.tsv"
    eval_name: str = "stsb-dev"
    serve_max_length: int | None = 384    # all-mpnet-base-v2's own limit: paragraphs embed whole
    student_rows: int = 4000              # unlabelled sentences the student learns from
    loss: str = "cosine"                  # mse | cosine, on mean-pooled sentence embeddings
    pooling: str = "mean"
    normalize: bool = True
    student_train_top: int = 6            # all layers: the skipped-layer student is far off at init
    student_lr: float = 2e-4
    student_epochs: float = 2.0


RECIPE_CLASSES = {"classification": ClassificationRecipe, "qa": QARecipe, "embedding": EmbeddingRecipe}

# Named recipes: per task, the fields that differ from the dataclass defaults.
NAMED: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "classification": {"eval_limit": None, "precision": "auto"},
        "qa": {"eval_limit": 300, "student_rows": 600, "precision": "auto"},
        "embedding": {"eval_limit": 500, "student_rows": 3500, "precision": "auto"},
    },
    "full": {
        "classification": {"name": "full", "precision": "auto", "teacher_rows": 67349, "student_rows": 67349, "min_words": 0,
                           "teacher_train_top": 12, "student_train_top": 6, "teacher_epochs": 2,
                           "student_epochs": 3, "teacher_lr": 3e-5, "student_lr": 5e-5, "max_length": 66},
        "qa": {"name": "full", "precision": "auto", "heldout_articles": 8, "teacher_rows": 100000, "student_rows": 100000,
               "max_length": 384, "serve_max_length": 384, "doc_stride": 128, "teacher_train_top": 12, "student_train_top": 6, "teacher_epochs": 2,
               "student_epochs": 3, "teacher_lr": 3e-5, "student_lr": 5e-5},
        "embedding": {"name": "full", "precision": "auto", "train_data": "stsb/train.tsv", "student_rows": 100000,
                      "student_train_top": 6, "student_epochs": 10, "student_lr": 5e-5},
    },
}


def parse_value(text: str, current: Any) -> Any:
    """Turn a --set string into the type of the field's current value."""
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(current, tuple):
        return tuple(part.strip() for part in text.split(","))
    for kind in (int, float):
        if isinstance(current, kind):
            return kind(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def get_recipe(task: str, name_or_file: str = "quick", overrides: list[str] | None = None) -> Common:
    """A task's recipe: a named one ('quick'/'full') or a JSON file, then key=value overrides."""
    cls = RECIPE_CLASSES[task]
    if name_or_file in NAMED:
        recipe = cls(**{"name": name_or_file, **NAMED[name_or_file].get(task, {})})
    else:
        data = json.loads(Path(name_or_file).read_text())
        data = data.get(task, data)  # a file may hold one recipe or one per task
        recipe = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    known = {f.name for f in fields(cls)}
    for item in overrides or []:
        key, _, value = item.partition("=")
        if key not in known:
            raise ValueError(f"unknown recipe field {key!r} for {task}; known: {sorted(known)}")
        recipe = replace(recipe, **{key: parse_value(value, getattr(recipe, key))})
    return recipe


def recipe_dict(recipe: Common) -> dict[str, Any]:
    """The recipe as JSON-ready data (recorded whole in every manifest)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(recipe).items()}
