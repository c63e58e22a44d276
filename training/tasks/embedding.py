"""Sentence embeddings: the teacher is the pretrained encoder itself (mean pooling); the student
learns to reproduce its sentence embeddings on unlabelled sentences (MSE or cosine).

Read top to bottom. The teacher's embeddings are computed once per sentence; the student's
frozen lower layers run once too, so each epoch costs only the student's top layers.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.data import load_labelled, load_rotten_tomatoes, sentences_of
from training.engine import Batch, cache_hidden, make_batches, run_top, train_loop
from training.losses import embedding_loss, mean_pool
from training.manifest import describe, save_model
from training.modeling import load_model, num_layers
from training.recipes import EmbeddingRecipe
from training.tasks.common import Clock, data_path, encode, manifest_fields, stage_checkpoint, start, student_for

log = logging.getLogger(__name__)


def save_teacher(recipe: EmbeddingRecipe, out: Path, name: str) -> PreTrainedModel:
    """No training: the pretrained sentence encoder is the embedding teacher, saved as a model."""
    clock = Clock()
    source, tokenizer = start(recipe)
    model = load_model(source, "embedding").eval()
    fields = manifest_fields(recipe, name=name, role="teacher", data=[], result=None, seconds=clock.seconds(),
                             pooling=recipe.pooling, normalize=recipe.normalize, pretrained=str(recipe.base))
    save_model(model, tokenizer, out, describe(model, **fields))
    return model


def sentences(recipe: EmbeddingRecipe) -> tuple[list[str], dict]:
    """Distinct sentences of the training file and the ``extra_data`` files (labels, if any, are
    not used), never one of the evaluation set's, shuffled, at most ``student_rows``."""
    path = data_path(recipe.train_data)
    examples, record = load_labelled(path, labels=None, require_label=False, skip_bad=recipe.skip_bad)
    texts = sentences_of(examples)
    extras = [extra_sentences(source, recipe) for source in recipe.extra_data]
    pool = list(dict.fromkeys(texts + [text for _, found in extras for text in found]))
    evaluated = set(eval_sentences(recipe))
    kept = [text for text in pool if text not in evaluated]
    excluded = len(pool) - len(kept)
    random.Random(recipe.seed).shuffle(kept)
    kept = kept[: recipe.student_rows]
    entry = {**record.to_dict(), "rows": len(kept), "note": "sentences only, labels unused",
             "extra": [{"path": str(source), "sentences": len(found)} for source, found in extras],
             "excluded_as_evaluation_sentences": excluded}
    if extras:
        log.info("embedding: %d sentences from %s and %s; %d kept", len(pool), path,
                 ", ".join(str(source) for source, _ in extras), len(kept))
    return kept, entry


def extra_sentences(source: str, recipe: EmbeddingRecipe) -> tuple[str, list[str]]:
    """The distinct sentences of one extra file with at least ``extra_min_words`` words."""
    if source == "rotten-tomatoes":
        examples, _ = load_rotten_tomatoes()
    else:
        examples, _ = load_labelled(data_path(source), labels=None, require_label=False, skip_bad=recipe.skip_bad)
    return source, [t for t in sentences_of(examples) if len(t.split()) >= recipe.extra_min_words]


def eval_sentences(recipe: EmbeddingRecipe) -> list[str]:
    """The evaluation set's sentences (never trained on); none when it is not here."""
    try:
        examples, _ = load_labelled(data_path(recipe.eval_data), labels=None, require_label=False, skip_bad=True)
    except (FileNotFoundError, ValueError):
        return []
    return sentences_of(examples)


def to_batches(tokenizer: PreTrainedTokenizerBase, texts: list[str], recipe: EmbeddingRecipe) -> list[Batch]:
    return make_batches(encode(tokenizer, texts, None, recipe.max_length), recipe.batch_size, tokenizer.pad_token_id)


@torch.no_grad()
def teacher_embeddings(teacher: PreTrainedModel, batches: list[Batch]) -> None:
    """t_emb [batch, hidden] per batch: the target, computed once per sentence (batches restored
    from a checkpoint hold it already)."""
    todo = [batch for batch in batches if "t_emb" not in batch]
    cache_hidden(teacher, todo, num_layers(teacher), "t_tokens", "embedding teacher: sentence embeddings (once)")
    for batch in todo:
        batch["t_emb"] = mean_pool(batch.pop("t_tokens"), batch["attention_mask"])


def distil_student(recipe: EmbeddingRecipe, teacher_dir: Path, out: Path, name: str, teacher_name: str,
                   teacher: PreTrainedModel | None = None) -> PreTrainedModel:
    """Student (every other layer) trained so mean_pool(student) matches mean_pool(teacher)."""
    clock = Clock()
    _, tokenizer = start(recipe, teacher_dir)
    teacher = teacher or load_model(teacher_dir, "embedding")
    texts, record = sentences(recipe)
    ckpt = stage_checkpoint(recipe, out, "student", teacher_dir)
    batches = ckpt.batches(lambda: to_batches(tokenizer, texts, recipe))
    teacher_embeddings(teacher, batches)

    student, layer_map, s_first, params = student_for(recipe, teacher, batches, "embedding student")
    ckpt.keep(batches)

    def loss_fn(m: PreTrainedModel, b: Batch) -> tuple[torch.Tensor, dict]:
        hidden = run_top(m, b, s_first, "s_hidden").last_hidden_state   # [batch, seq, hidden]
        loss = embedding_loss(mean_pool(hidden, b["attention_mask"]), b["t_emb"], recipe.loss)
        return loss, {recipe.loss: loss.item()}

    result = train_loop(student, params, batches, loss_fn, epochs=recipe.student_epochs, lr=recipe.student_lr,
                        max_seconds=recipe.student_max_s, seed=recipe.seed, desc=f"{name}: distil",
                        checkpoint=ckpt, dropout=recipe.student_dropout)
    fields = manifest_fields(recipe, name=name, role="student", data=[record], result=result, seconds=clock.seconds(),
                             teacher=teacher_name, layer_map=layer_map, pooling=recipe.pooling,
                             normalize=recipe.normalize, trained_layers=list(range(s_first, num_layers(student))))
    save_model(student, tokenizer, out, describe(student, **fields))
    return student
