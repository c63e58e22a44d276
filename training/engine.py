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
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from training.checkpoint import Checkpoint
from training.dropout import training_dropout
from training.modeling import forward_range, inference_copy, num_layers

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
def cache_hidden(model: PreTrainedModel, batches: list[Batch], upto: int, key: str, desc: str,
                 also: Sequence[int] = (), also_key: str = "t_low") -> None:
    """Store the output of layers [0, upto) in ``batch[key]`` ([batch, seq, hidden]): run once
    (batches that hold it already, restored from a checkpoint, are left as they are). ``also``:
    hidden-state indices below ``upto`` kept too, stacked in ``batch[also_key]`` (fp16), for a
    later stage that needs them (alpha_mid) and would otherwise run these layers again."""
    model.eval()
    todo = [batch for batch in batches if key not in batch]
    runner = inference_copy(model) if todo else model
    for batch in tqdm(todo, desc=desc, unit="batch", leave=False):
        if not also:
            batch[key] = forward_range(runner, 0, upto, batch, head=False)
            continue
        states = forward_range(runner, 0, upto, batch).hidden_states  # the head's output is not used
        batch[key] = states[upto]
        batch[also_key] = torch.stack([states[m] for m in also]).to(torch.float16)  # [len(also), batch, seq, hidden]


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
    resumed_at: list[int] = field(default_factory=list)  # steps at which a stopped run was resumed


@dataclass
class LoopState:
    """What a stopped loop needs to take the same steps it would have taken (see checkpoint.py)."""

    rng: random.Random
    step: int = 0                      # the next step to run
    order: list[int] = field(default_factory=list)  # batches left in this epoch's shuffle
    elapsed: float = 0.0               # training seconds before this run
    resumed_at: list[int] = field(default_factory=list)


def _trained_names(model: PreTrainedModel, params: list[torch.nn.Parameter]) -> list[str]:
    ids = {id(p) for p in params}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def _trained(model: PreTrainedModel, names: list[str]) -> dict[str, torch.Tensor]:
    weights = dict(model.named_parameters())
    return {n: weights[n].detach().clone() for n in names}


def _as_rng_state(value: Any) -> Any:
    """random.Random's state is (version, tuple of ints, gauss); a stored copy may come back with lists."""
    version, internal, gauss = value
    return version, tuple(internal), gauss


def _optimizer(params: list[torch.nn.Parameter], total: int, lr: float, warmup: float,
               weight_decay: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a linear warm-up over ``warmup`` of the steps, then a linear decay to 0.

    The fused kernel where every parameter allows it: on CPU the default per-tensor loop spent
    ~130 ms a step updating 42 M parameters (6 MPNet layers), the fused one ~30 ms; in a whole
    step 1.09-1.17x (`benchmarks.bench_train_step`), about 60 s of a quick build's loops (2026-12-06)."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    warm = max(1, int(warmup * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    return optimizer, schedule


class StopRequests:
    """SIGINT/SIGTERM during training ask the loop to checkpoint and stop at the next step
    (main thread only; elsewhere signals keep their handlers)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._ask)
        return self

    def _ask(self, signum: int, _frame: object) -> None:
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class _Run:
    """One train_loop call's moving parts, so that the loop itself reads as steps: the optimiser
    and schedule, the position (LoopState) and the checkpoint that saves and restores them."""

    model: PreTrainedModel
    names: list[str]                   # the trained parameters' names (what a checkpoint stores)
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    state: LoopState
    total: int                         # steps of the whole run
    checkpoint: Checkpoint | None
    desc: str
    saved: float = field(default_factory=time.monotonic)  # when the loop state was last saved
    marks: set[int] = field(default_factory=set)          # steps at which a curve point is kept

    def resume(self) -> None:
        """Restore a stopped run of the same length, if any, and plan the curve points."""
        stored = self.checkpoint.loop_state() if self.checkpoint else None
        if stored is not None and stored["total"] == self.total:
            self._restore(stored)
            log.info("%s: resumed at step %d of %d (%.0fs trained before)", self.desc, self.state.step,
                     self.total, self.state.elapsed)
        if self.checkpoint:
            self.checkpoint.start_curve(resumed=bool(self.state.resumed_at))
            self.marks = self.checkpoint.curve_marks(self.total)

    def _restore(self, stored: dict[str, Any]) -> None:
        """Put a checkpoint back: the trained weights, optimiser moments, schedule, RNGs, position."""
        assert sorted(stored["params"]) == sorted(self.names), "checkpoint trains other parameters"
        weights = dict(self.model.named_parameters())
        with torch.no_grad():
            for name in self.names:
                weights[name].copy_(stored["params"][name])
        self.optimizer.load_state_dict(stored["optimizer"])
        self.schedule.load_state_dict(stored["schedule"])
        torch.set_rng_state(stored["torch_rng"])
        state = self.state
        state.rng.setstate(_as_rng_state(stored["rng"]))
        state.step, state.order, state.elapsed = stored["step"], list(stored["order"]), stored["elapsed"]
        state.resumed_at = [*stored["resumed_at"], state.step]

    def next_batch(self, count: int) -> int:
        """The next batch's index: a fresh shuffle of all ``count`` batches at each epoch's start."""
        if not self.state.order:
            self.state.order = list(range(count))
            self.state.rng.shuffle(self.state.order)
        return self.state.order.pop()

    def keep(self, stop: str | None) -> None:
        """After a step: a curve point at its marks, the loop state when due; exit when asked to stop."""
        step, checkpoint = self.state.step, self.checkpoint
        if checkpoint and step in self.marks:
            checkpoint.save_curve(step, self.total, self.state.elapsed, _trained(self.model, self.names))
        if checkpoint and checkpoint.due(self.saved, bool(stop)):
            checkpoint.save_loop(self._snapshot())
            self.saved = time.monotonic()
        if stop:
            kept = checkpoint is not None and checkpoint.folder is not None
            raise SystemExit(f"{self.desc}: stopped by {stop} at step {step} of {self.total}"
                             + ("; checkpoint saved: run the same command again to resume" if kept else ""))

    def _snapshot(self) -> dict[str, Any]:
        state = self.state
        return {"total": self.total, "step": state.step, "order": list(state.order), "elapsed": state.elapsed,
                "resumed_at": state.resumed_at, "rng": state.rng.getstate(), "torch_rng": torch.get_rng_state(),
                "params": _trained(self.model, self.names),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}


def train_loop(model: PreTrainedModel, params: list[torch.nn.Parameter], batches: list[Batch],
               loss_fn: Callable[[PreTrainedModel, Batch], tuple[torch.Tensor, dict]], *,
               epochs: float, lr: float, warmup: float = 0.1, weight_decay: float = 0.01,
               max_seconds: float | None = None, seed: int = 0, desc: str = "train",
               checkpoint: Checkpoint | None = None, dropout: float | None = None) -> LoopResult:
    """AdamW + linear warm-up/decay over shuffled cached batches; stops at ``max_seconds`` if set.

    ``epochs`` may be fractional (a budget in passes over the data). With a ``checkpoint`` the
    state is saved every ``checkpoint.every_s`` seconds and on SIGINT/SIGTERM (then the run
    exits), and a stopped run's state is picked up where it stopped. ``dropout`` sets every
    dropout layer's rate for this loop (None: the model's own), see `training.dropout`.
    """
    total = max(1, math.ceil(epochs * len(batches)))
    run = _Run(model, _trained_names(model, params), *_optimizer(params, total, lr, warmup, weight_decay),
               LoopState(random.Random(seed)), total, checkpoint, desc)
    run.resume()
    state = run.state
    start, loss_value, early = time.monotonic() - state.elapsed, float("nan"), False
    model.train()
    bar = tqdm(total=total, initial=state.step, desc=desc, unit="step", leave=False)
    with training_dropout(model, dropout), bar, StopRequests() as stop:
        while state.step < total:
            batch = batches[run.next_batch(len(batches))]
            loss_value = _step(model, params, run.optimizer, run.schedule, loss_fn, batch, desc, state.step, bar)
            state.step += 1
            state.elapsed = time.monotonic() - start
            run.keep(stop.requested)
            if max_seconds and state.elapsed > max_seconds:
                early = state.step < total
                break
    model.eval()
    log.info("%s: %d steps (%.2f epochs) in %.0fs, last loss %.4f%s", desc, state.step,
             state.step / len(batches), state.elapsed, loss_value, " (time budget reached)" if early else "")
    return LoopResult(state.step, round(state.step / len(batches), 3), round(state.elapsed, 1), loss_value, early,
                      state.resumed_at)


def _step(model: PreTrainedModel, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
          schedule: torch.optim.lr_scheduler.LRScheduler,
          loss_fn: Callable[[PreTrainedModel, Batch], tuple[torch.Tensor, dict]], batch: Batch, desc: str,
          step: int, bar: tqdm) -> float:
    """One optimiser step; a non-finite loss stops training with the step that produced it."""
    loss, parts = loss_fn(model, batch)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{desc}: loss is {loss.item()} at step {step}")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    value = loss.item()
    bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()} or {"loss": f"{value:.3f}"})
    bar.update()
    return value


def drop_keys(batches: list[Batch], *keys: str) -> None:
    """Free cached tensors that the next stage does not need (memory stays flat)."""
    for batch in batches:
        for key in keys:
            batch.pop(key, None)
