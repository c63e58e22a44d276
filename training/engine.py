"""The shared training machinery: length-bucketed batches, cached frozen layers, the loop.

A "batch" here is a plain dict of tensors: token inputs (``input_ids``, ``attention_mask``,
maybe ``token_type_ids``), targets (``labels``, ``start``/``end``, teacher outputs ``t_*``) and
cached hidden states. Batches are built once, sorted by length (little padding), and their
order is shuffled each epoch: that is what lets frozen-layer outputs and teacher outputs be
computed once per example and reused across epochs.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from training.modeling import forward_range, num_layers

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


def setup_torch(threads: int | None, seed: int) -> None:
    """Deterministic seeds; threads capped (2 cores here, shared with the service)."""
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad lists of ints into a [batch, longest] int64 tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def make_batches(encoded: list[dict[str, list[int]]], batch_size: int, pad_id: int,
                 extras: Mapping[str, Sequence[Any]] | None = None) -> list[Batch]:
    """Group examples of similar length; ``extras`` (labels...) are per-example and travel along."""
    if not encoded:
        return []
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    batches = []
    for first in range(0, len(order), batch_size):
        idx = order[first : first + batch_size]
        batch: Batch = {"index": torch.tensor(idx)}
        for key in encoded[idx[0]]:  # token-level lists: input_ids, attention_mask, span_mask...
            batch[key] = pad([encoded[i][key] for i in idx], pad_id if key == "input_ids" else 0)
        for key, values in (extras or {}).items():
            batch[key] = torch.as_tensor([values[i] for i in idx])
        batches.append(batch)
    return batches


@torch.no_grad()
def cache_hidden(model: PreTrainedModel, batches: list[Batch], upto: int, key: str, desc: str) -> None:
    """Store the output of layers [0, upto) in ``batch[key]`` ([batch, seq, hidden]): run once."""
    model.eval()
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
        batch[key] = forward_range(model, 0, upto, batch, head=False)


def run_top(model: PreTrainedModel, batch: Batch, start: int, hidden_key: str):
    """Run layers [start, n) + head, from cached hidden states when start > 0."""
    hidden = batch[hidden_key] if start > 0 else None
    return forward_range(model, start, num_layers(model), batch, hidden=hidden)


@dataclass
class LoopResult:
    steps: int
    epochs_done: float
    seconds: float
    last_loss: float
    stopped_early: bool


def train_loop(model: PreTrainedModel, params: list[torch.nn.Parameter], batches: list[Batch],
               loss_fn: Callable[[PreTrainedModel, Batch], tuple[torch.Tensor, dict]], *,
               epochs: float, lr: float, warmup: float = 0.1, weight_decay: float = 0.01,
               max_seconds: float | None = None, seed: int = 0, desc: str = "train") -> LoopResult:
    """AdamW + linear warm-up/decay over shuffled cached batches; stops at ``max_seconds`` if set.

    ``epochs`` may be fractional (a budget in passes over the data).
    """
    total = max(1, math.ceil(epochs * len(batches)))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(warmup * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    order: list[int] = []
    rng, start = random.Random(seed), time.monotonic()
    model.train()
    loss_value, step, early = float("nan"), 0, False
    with tqdm(total=total, desc=desc, unit="step", leave=False) as bar:
        for step in range(total):
            if not order:
                order = list(range(len(batches)))
                rng.shuffle(order)
            loss, parts = loss_fn(model, batches[order.pop()])
            if not torch.isfinite(loss):
                raise RuntimeError(f"{desc}: loss is {loss.item()} at step {step}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()} or {"loss": f"{loss_value:.3f}"})
            bar.update()
            if max_seconds and time.monotonic() - start > max_seconds:
                early = step + 1 < total
                break
    model.eval()
    seconds = time.monotonic() - start
    log.info("%s: %d steps (%.2f epochs) in %.0fs, last loss %.4f%s", desc, step + 1,
             (step + 1) / len(batches), seconds, loss_value, " (time budget reached)" if early else "")
    return LoopResult(step + 1, round((step + 1) / len(batches), 3), round(seconds, 1), loss_value, early)


def drop_keys(batches: list[Batch], *keys: str) -> None:
    """Free cached tensors that the next stage does not need (memory stays flat)."""
    for batch in batches:
        for key in keys:
            batch.pop(key, None)
