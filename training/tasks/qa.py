"""Extractive QA (SQuAD): fine-tune the teacher's span head, then distil the student.

Read top to bottom. Windows come from the service's own ``app.tasks.qa.encode_qa`` (question
first, context cut into windows overlapping by ``doc_stride``), so training and serving window
alike. Each question trains on the first window that holds its gold answer. Validation is by
article: the last ``heldout_articles`` are never trained on; evaluate reads them from the same file.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedModel

from inference.tasks.qa import encode_qa  # the serving windowing: one definition for both sides
from training.augment import crops
from training.data import QAExample, load_squad_articles, sha256_file, split_articles, squad_examples
from training.engine import Batch, cache_hidden, drop_keys, make_batches, run_top, train_loop
from training.losses import qa_loss
from training.manifest import describe, save_model
from training.modeling import freeze_below, load_model, num_layers
from training.recipes import QARecipe
from training.tasks.common import (
    Clock,
    data_path,
    manifest_fields,
    mid_pairs,
    stage_checkpoint,
    start,
    student_for,
    teacher_outputs,
)

log = logging.getLogger(__name__)
CROP = "cropped"  # batch key of cropped contexts' batches: soft targets, gold spans, last-layer cosine; no t_mid


def answer_windows(tokenizer: Tokenizer, example: QAExample, recipe: QARecipe, every: bool,
                   length: int) -> list[dict[str, Any]]:
    """The first window of ``length`` tokens holding the whole gold answer, or every one (in context
    order), each with its start/end token and context mask; none when the answer is cut off."""
    first, last = example.answer_start, example.answer_start + len(example.answers[0])
    found = []
    for window in encode_qa(tokenizer, example.question, example.context, length, recipe.doc_stride):
        spans = window.offsets                                          # char span per token, None off-context
        starts = [i for i, o in enumerate(spans) if o and o[0] <= first < o[1]]
        ends = [i for i, o in enumerate(spans) if o and o[0] < last <= o[1]]
        if starts and ends and starts[0] <= ends[-1]:
            found.append({"input_ids": window.ids, "attention_mask": [1] * len(window.ids),
                          "token_type_ids": window.type_ids, "span_mask": [int(o is not None) for o in spans],
                          "start": starts[0], "end": ends[-1]})
            if not every:
                break
    return found


def split(recipe: QARecipe) -> tuple[list[QAExample], dict]:
    """Training questions of the training articles (shuffled, seeded) and the data record; the
    validation articles (just before the held-out ones) are left out."""
    path = data_path(recipe.train_data)
    train_ids = training_articles(recipe)
    examples, skipped = squad_examples(path, train_ids, skip_bad=recipe.skip_bad)
    random.Random(recipe.seed).shuffle(examples)
    record = {"path": str(path), "sha256": sha256_file(path), "rows": 0, "split": "train",
              "skipped": skipped, "articles": train_ids}
    return examples, record


def _train_and_validation(recipe: QARecipe) -> tuple[list[int], list[int]]:
    """Articles before the held-out ones: the last `val_articles` (at most a fifth) validate,
    the others train."""
    ids, _ = split_articles(_article_count(data_path(recipe.train_data)), recipe.heldout_articles)
    cut = len(ids) - min(recipe.val_articles, len(ids) // 5)
    return ids[:cut], ids[cut:]


def training_articles(recipe: QARecipe) -> list[int]:
    """The articles trained on: all but the validation and the held-out ones."""
    return _train_and_validation(recipe)[0]


def validation_entry(recipe: QARecipe) -> dict | None:
    """The validation split's manifest entry: the training file and its validation articles."""
    chosen = _train_and_validation(recipe)[1]
    return {"path": str(data_path(recipe.train_data)), "articles": chosen} if chosen else None


def heldout_articles(recipe: QARecipe) -> list[int]:
    """Indices of the articles never trained on (evaluate reads them from the same file)."""
    return split_articles(_article_count(data_path(recipe.train_data)), recipe.heldout_articles)[1]


def _article_count(path: Path | str) -> int:
    return len(load_squad_articles(path)[0])


def to_batches(tokenizer: Tokenizer, examples: list[QAExample], recipe: QARecipe, pad_id: int,
               windows: str = "first", skip_first: bool = False, student: bool = False,
               cropped: bool = False) -> tuple[list[Batch], int]:
    """Batches of each question's first answer window ('first') or of all its answer windows
    ('all': the same answer in other crops of its context); skip_first leaves out the first ones
    (already in the teacher's batches); windows of the student's length when ``student``;
    ``cropped`` marks batches of cropped contexts (``CROP`` key)."""
    length = student_length(recipe) if student else recipe.max_length
    found = [answer_windows(tokenizer, e, recipe, windows == "all", length) for e in examples]
    if missing := sum(not f for f in found):
        log.warning("qa: %d questions have no window holding their answer; not trained on", missing)
    kept = [w for f in found for w in f[int(skip_first):]]
    extras = {"start": [w.pop("start") for w in kept], "end": [w.pop("end") for w in kept]}
    if cropped:
        extras[CROP] = [True] * len(kept)
    return make_batches(kept, recipe.batch_size, pad_id, extras), len(kept)


def student_length(recipe: QARecipe) -> int:
    """Tokens per student window: its own length when the recipe sets one, else the teacher's."""
    return recipe.student_max_length or recipe.max_length


def student_reads_teacher_windows(recipe: QARecipe) -> bool:
    """Whether the student distils on the teacher's own windows, and so can reuse what its
    frozen-layer pass cached (build-defaults hands them over)."""
    return student_length(recipe) == recipe.max_length


def window_tokenizer(tokenizer) -> Tokenizer:
    """A private copy of the fast tokenizer's backend (encode_qa reconfigures what it is given)."""
    return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())


def span_loss(recipe: QARecipe, model: PreTrainedModel, batch: Batch, first_top: int, key: str,
              teacher: bool, mid_layers: Sequence[int] = ()) -> tuple[torch.Tensor, dict]:
    out = run_top(model, batch, first_top, key)                         # start/end_logits [batch, seq]
    targets = None if teacher else (batch["t_start_logits"], batch["t_end_logits"])
    alphas = ({"alpha_kd": 0.0, "alpha_ce": 1.0} if teacher
              else {"alpha_kd": recipe.alpha_kd, "alpha_ce": recipe.alpha_ce, "alpha_cos": recipe.alpha_cos})
    hidden = (out.hidden_states[-1], batch["t_last"], batch["attention_mask"]) if "t_last" in batch else None
    mid = None
    if mid_layers and "t_mid" in batch:  # hidden_states[j] is the input of student layer first_top + j
        mid = ([out.hidden_states[k - first_top] for k in mid_layers], batch["t_mid"], batch["attention_mask"])
        alphas["alpha_mid"] = recipe.alpha_mid
    return qa_loss((out.start_logits, out.end_logits), targets, (batch["start"], batch["end"]), batch["span_mask"],
                   temperature=recipe.temperature, hidden=hidden, mid=mid, **alphas)


def train_teacher(recipe: QARecipe, out: Path, name: str) -> tuple[PreTrainedModel, list[Batch]]:
    """Fine-tune the top layers + a new span head on answer windows of the training articles."""
    clock = Clock()
    source, tokenizer = start(recipe)
    model = load_model(source, "qa")
    examples, record = split(recipe)
    ckpt = stage_checkpoint(recipe, out, "teacher")
    batches = ckpt.batches(lambda: to_batches(window_tokenizer(tokenizer), examples[: recipe.teacher_rows], recipe,
                                              tokenizer.pad_token_id)[0])
    rows = sum(len(b["start"]) for b in batches)
    first_top = num_layers(model) - recipe.teacher_train_top
    if first_top > 0:  # full fine-tuning (train_top = all layers) caches nothing
        low = ([m for _, m in mid_pairs(recipe, model) if m < first_top]  # the student's alpha_mid targets
               if student_reads_teacher_windows(recipe) else [])
        cache_hidden(model, batches, first_top, "t_hidden", "qa teacher: frozen layers (once)", also=low)
    ckpt.keep(batches)
    params = freeze_below(model, first_top)
    result = train_loop(model, params, batches, lambda m, b: span_loss(recipe, m, b, first_top, "t_hidden", True),
                        epochs=recipe.teacher_epochs, lr=recipe.teacher_lr, max_seconds=recipe.teacher_max_s,
                        seed=recipe.seed, desc=f"{name}: train top layers", checkpoint=ckpt,
                        dropout=recipe.teacher_dropout)
    for p in model.parameters():
        p.requires_grad = True
    fields = manifest_fields(recipe, name=name, role="teacher", data=[{**record, "rows": rows}], result=result,
                             seconds=clock.seconds(), doc_stride=recipe.doc_stride, validation=validation_entry(recipe),
                             trained_layers=list(range(first_top, num_layers(model))))
    save_model(model, tokenizer, out, describe(model, **fields))
    return model, batches


def student_batches(tokenizer: Tokenizer, examples: list[QAExample], seen: int, recipe: QARecipe,
                    pad_id: int) -> list[Batch]:
    """The student's windows beyond the teacher's ``seen`` ones: the next questions', with
    student_windows 'all' the other answer windows of the questions the teacher trained on too,
    and with student_crops each question's cropped contexts (their first answer windows)."""
    windows = recipe.student_windows
    if windows not in ("first", "all"):
        raise ValueError(f"student_windows must be 'first' or 'all', got {windows!r}")
    more = to_batches(tokenizer, examples[seen: recipe.student_rows], recipe, pad_id, windows, student=True)[0]
    if recipe.student_crops:
        questions = examples[: recipe.student_rows]
        cropped = crops(questions, recipe.student_crops, recipe.seed)
        log.info("qa student: %d cropped contexts beside %d questions", len(cropped), len(questions))
        more += to_batches(tokenizer, cropped, recipe, pad_id, "first", student=True, cropped=True)[0]
    if windows != "all" or not seen:
        return more
    return to_batches(tokenizer, examples[:seen], recipe, pad_id, windows, skip_first=True, student=True)[0] + more


def distil_student(recipe: QARecipe, teacher_dir: Path, out: Path, name: str, teacher_name: str,
                   teacher: PreTrainedModel | None = None, cached: list[Batch] | None = None) -> PreTrainedModel:
    """Student learns the teacher's start/end distributions (KL) plus the gold span (CE)."""
    clock = Clock()
    _, tokenizer = start(recipe, teacher_dir)
    teacher = teacher or load_model(teacher_dir, "qa")
    examples, record = split(recipe)
    if not student_reads_teacher_windows(recipe):
        log.info("qa student: windows of %d tokens, not the teacher's %d: the whole teacher runs on them",
                 student_length(recipe), recipe.max_length)
        drop_keys(cached or [], "t_hidden", "t_low")
        cached = []
    cached = cached or []
    seen = sum(len(b["start"]) for b in cached)
    ckpt = stage_checkpoint(recipe, out, "student", teacher_dir)
    batches = ckpt.batches(lambda: cached + student_batches(window_tokenizer(tokenizer), examples, seen, recipe,
                                                            tokenizer.pad_token_id))
    first_top = num_layers(teacher) - recipe.teacher_train_top
    pairs = mid_pairs(recipe, teacher)
    plain = [b for b in batches if CROP not in b]
    teacher_outputs(teacher, plain, first_top, keep_hidden=recipe.alpha_cos > 0,
                    desc="qa teacher span logits (once)", mid_layers=[m for _, m in pairs])
    teacher_outputs(teacher, [b for b in batches if CROP in b], first_top, keep_hidden=recipe.alpha_cos > 0,
                    desc="qa teacher span logits, cropped contexts (once)")  # their t_mid would not fit in memory

    student, layer_map, s_first, params = student_for(recipe, teacher, batches, "qa student")
    ckpt.keep(batches)
    loss = partial(span_loss, recipe, first_top=s_first, key="s_hidden", teacher=False,
                   mid_layers=[k for k, _ in pairs])
    result = train_loop(student, params, batches, loss,
                        epochs=recipe.student_epochs, lr=recipe.student_lr, max_seconds=recipe.student_max_s,
                        seed=recipe.seed, desc=f"{name}: distil", checkpoint=ckpt, dropout=recipe.student_dropout)
    drop_keys(batches, "t_last", "t_mid")
    rows = sum(len(b["start"]) for b in batches)
    fields = manifest_fields(recipe, name=name, role="student", data=[{**record, "rows": rows}], result=result,
                             seconds=clock.seconds(), teacher=teacher_name, layer_map=layer_map,
                             doc_stride=recipe.doc_stride, validation=validation_entry(recipe),
                             train_max_length=student_length(recipe),
                             trained_layers=list(range(s_first, num_layers(student))))
    save_model(student, tokenizer, out, describe(student, **fields))
    return student
