"""Helpers the task recipes share: data paths, tokenising, teacher outputs, manifest fields."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from training.checkpoint import Checkpoint
from training.data import is_hub_spec
from training.engine import Batch, LoopResult, cache_hidden, setup_torch
from training.modeling import forward_range, freeze_below, inference_copy, num_layers, precision_in_use, set_precision
from training.paths import data_dir
from training.pretrained import NAME, resolve_base
from training.recipes import Common, QARecipe, Recipe, recipe_dict
from training.student import make_student, parse_layer_map

TEACHER_KEYS = {"t_logits", "t_start_logits", "t_end_logits"}


def data_path(path: str) -> Path | str:
    """Recipe data paths are relative to the data directory setting unless absolute; a hub
    dataset spec (``hf:glue:sst2@train``) is passed through to the loaders as is."""
    if is_hub_spec(path):
        return path
    candidate = Path(path).expanduser()
    resolved = candidate if candidate.is_absolute() or candidate.exists() else data_dir() / candidate
    if not resolved.exists():
        raise FileNotFoundError(f"data file {resolved} not found: set DISTILSERVE_DATA_DIR to the folder "
                                f"that holds {path} (default ../shared/data from the repository root)")
    return resolved


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pairs: Sequence[str | None] | None,
           max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise without padding (batches pad to their own longest row)."""
    if not texts:
        return []
    second = [p or "" for p in pairs] if pairs is not None and any(p is not None for p in pairs) else None
    enc = tokenizer(list(texts), second, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def start(recipe: Common, base: str | Path | None = None) -> tuple[str, PreTrainedTokenizerBase]:
    """Seed + threads, then the base model's location and tokenizer."""
    setup_torch(recipe.threads, recipe.seed)
    set_precision(recipe.precision)
    source = resolve_base(str(base or recipe.base))
    try:
        return source, AutoTokenizer.from_pretrained(source)
    except OSError as exc:  # transformers' offline / not-found messages do not name the model
        raise OSError(f"base model {source!r} not found: not a folder, not {NAME!r}, and not on the hub "
                      f"or in its cache ({exc})") from exc


@torch.no_grad()
def teacher_outputs(teacher: PreTrainedModel, batches: list[Batch], first_top: int, keep_hidden: bool,
                    desc: str, mid_layers: Sequence[int] = ()) -> None:
    """Teacher outputs, computed once per example and stored in each batch (``t_*`` keys).

    A batch that still holds the teacher's cached lower layers (``t_hidden``) only runs the top
    ``first_top..n`` layers; ``mid_layers`` (teacher hidden-state indices kept in ``t_mid`` for
    alpha_mid) below them come from ``t_low``, which that cache pass kept, or else the batch runs
    the whole teacher, as batches without the cache do; one that holds the outputs already
    (restored from a checkpoint) is skipped.
    """
    teacher.eval()
    n = num_layers(teacher)
    low = [m for m in mid_layers if m < first_top]  # kept by the teacher stage's cache pass, if it ran here
    todo = [b for b in batches if not (TEACHER_KEYS & set(b)) or (keep_hidden and "t_last" not in b)
            or (mid_layers and "t_mid" not in b)]
    runner = inference_copy(teacher) if todo else teacher
    for batch in tqdm(todo, desc=desc, unit="batch", leave=False):
        cached = "t_hidden" in batch and (not low or "t_low" in batch)
        first = first_top if cached else 0
        out = forward_range(runner, first, n, batch, hidden=batch["t_hidden"] if cached else None)
        for key in ("logits", "start_logits", "end_logits"):
            if getattr(out, key, None) is not None:
                batch[f"t_{key}"] = out[key]
        if keep_hidden:
            batch["t_last"] = out.hidden_states[-1].to(torch.float16)  # [batch, seq, hidden]
        if mid_layers:  # hidden_states[j] is the input of teacher layer first + j
            high = [out.hidden_states[m - first] for m in mid_layers if m >= first]
            parts = ([batch["t_low"]] if cached and low else []) + ([torch.stack(high).half()] if high else [])
            batch["t_mid"] = torch.cat(parts)                           # [len(mid_layers), batch, seq, hidden]
        batch.pop("t_hidden", None)
        batch.pop("t_low", None)


def mid_pairs(recipe: QARecipe, teacher: PreTrainedModel) -> list[tuple[int, int]]:
    """(student layer k, teacher layer layer_map[k]) whose inputs alpha_mid matches: every student
    layer whose input a trained student layer computes (layer 0's input is the embeddings, which
    both share; a frozen layer's output has nothing to learn); none when the term is off."""
    if not recipe.alpha_mid:
        return []
    layer_map = layer_map_for(recipe, teacher)
    first = len(layer_map) - recipe.student_train_top
    return [(k, layer_map[k]) for k in range(max(1, first + 1), len(layer_map))]


def manifest_fields(recipe: Recipe, *, name: str, role: str, data: list[dict], result: LoopResult | None,
                    seconds: float, **extra: object) -> dict:
    """Fields every trained model's manifest carries (the rest come from the model itself)."""
    fields = {"name": name, "task": recipe.task, "role": role,
              "max_length": recipe.serve_max_length or recipe.max_length, "train_max_length": recipe.max_length,
              "data": data, "recipe": recipe_dict(recipe), "seed": recipe.seed,
              "training_time_s": round(seconds, 1), "training_precision": precision_in_use(),
              "training": vars(result) if result else None}
    fields.update(extra)
    return fields


def layer_map_for(recipe: Common, teacher: PreTrainedModel) -> list[int]:
    return parse_layer_map(recipe.layer_map, num_layers(teacher))


def student_for(recipe: Common, teacher: PreTrainedModel, batches: list[Batch], label: str
                ) -> tuple[PreTrainedModel, list[int], int, list[torch.nn.Parameter]]:
    """The student every task distils the same way: initialised from the teacher's layer map,
    its layers below the top `student_train_top` frozen and their output cached once in
    ``batch["s_hidden"]``. Returns (student, layer map, first trained layer, trained params)."""
    layer_map = layer_map_for(recipe, teacher)
    student = make_student(teacher, layer_map)
    first = num_layers(student) - recipe.student_train_top             # e.g. 6 - 3 = 3
    if first > 0:
        cache_hidden(student, batches, first, "s_hidden", f"{label}: frozen layers (once)")
    return student, layer_map, first, freeze_below(student, first)


def stage_checkpoint(recipe: Recipe, out: Path, stage: str, teacher_dir: Path | None = None) -> Checkpoint:
    """The resumable state of one stage of building ``out``: it matches only this recipe, this
    training file and (for a student) these teacher weights."""
    inputs = [data_path(recipe.train_data)] + ([Path(teacher_dir) / "model.safetensors"] if teacher_dir else [])
    return Checkpoint.at(out, stage, recipe_dict(recipe), *inputs)


class Clock:
    """Wall time of a training stage, for the manifest's training_time_s."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.t0
