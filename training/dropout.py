"""Dropout while a loop trains: the rate per stage, and masks drawn 16 bits at a time.

Why a module of its own: on CPU `nn.Dropout` draws its mask with `bernoulli_`, one float draw per
element, and those draws took ~17% of an MPNet training step (100 ms of 620 for 8 windows of 128
tokens, Xeon, 2026-12-06). Here four mask elements come from one 64-bit draw, each 16 random bits
compared with a threshold: forward and backward of an attention-sized tensor 8.4 -> 3.3 ms.
The rate is a recipe choice per stage because dropping the masks altogether costs quality on
some stages (the quick QA teacher fell from F1 70.7 to 53.5 without them; README).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

LEVELS = 1 << 16  # mask resolution: the drop probability is rounded to a multiple of 1/65,536


class _Keep(torch.autograd.Function):
    """x * keep * scale, keeping only the bool mask for backward (not a float copy of it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


def sixteen_bit_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of `x` at rate `p` (rounded to 1/65,536), from torch's seeded generator,
    so a resumed run draws the same masks as an unstopped one."""
    dropped = round(p * LEVELS)
    if dropped >= LEVELS:
        return x * 0.0
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)  # 64 uniform bits
    bits = words.view(torch.int16)[:n].view(x.shape)                      # uniform over [-32768, 32767]
    keep = bits >= dropped - LEVELS // 2                                  # P(keep) = 1 - dropped / 65,536
    return _Keep.apply(x, keep, LEVELS / (LEVELS - dropped))


class SixteenBitDropout(torch.nn.Dropout):
    """`nn.Dropout` with `sixteen_bit_dropout` masks on CPU (elsewhere the fused kernel is fast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return super().forward(x)
        return sixteen_bit_dropout(x, self.p)


@contextlib.contextmanager
def training_dropout(model: torch.nn.Module, rate: float | None, fast: bool = True) -> Iterator[None]:
    """While the block runs, every `nn.Dropout` of `model` drops at `rate` (None: its own rate)
    with 16-bit masks (`fast=False`: torch's own); both are put back after, so the saved model and
    its config are unchanged."""
    modules = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    saved = [m.p for m in modules]
    for module in modules:
        module.p = module.p if rate is None else float(rate)
        if fast:
            module.__class__ = SixteenBitDropout
    try:
        yield
    finally:
        for module, p in zip(modules, saved, strict=True):
            module.p, module.__class__ = p, torch.nn.Dropout
