"""What one training step costs on this CPU, and what the engine's two speed choices buy:
AdamW fused or per tensor, dropout on (0.1; torch's masks or 16-bit ones) or off, measured in one
run on one model.

  python -m benchmarks.bench_train_step                    # 6 MPNet-base layers, 8 x 128 tokens
  python -m benchmarks.bench_train_step --layers 3 --batch 32 --tokens 24   # an SST-2 student step

Why: on a 2-core CPU the optimiser and the dropout masks are a large share of a step (on the
Xeon of 2026-12-06: 130 ms and 100 ms of a 620 ms QA step), so the engine runs AdamW fused and
the recipes set dropout per stage (`teacher_dropout`, `student_dropout`), drawing its masks 16
bits at a time (`training.dropout`). The model is
random-initialised at all-mpnet-base-v2's shapes: speed needs no trained weights. Each variant
runs in turns with the others, round after round; the median step of each is printed with its
ratio to the per-tensor AdamW with dropout on (what the engine did before).

It also times the no-grad pass the build runs once per example (frozen-layer caches, teacher
targets) under bf16 autocast: on the fp32 model, and on `training.modeling.inference_copy`, whose
Linear weights are cast to bf16 once instead of on every call (what the engine runs now).
"""
from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from transformers import MPNetConfig, MPNetForQuestionAnswering

from training.dropout import training_dropout
from training.int8_speed import in_turns
from training.modeling import forward_range, inference_copy, precision_in_use, set_precision

Step = Callable[[], None]


def make_step(layers: int, batch: int, tokens: int, fused: bool, dropout: float, fast: bool) -> Step:
    """One QA training step of a fresh model (all its layers trained, as the quick QA student)."""
    torch.manual_seed(0)
    model = MPNetForQuestionAnswering(MPNetConfig(num_hidden_layers=layers)).train()
    params = [p for n, p in model.named_parameters() if "embeddings" not in n]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused or None)
    inputs = {"input_ids": torch.randint(5, 30000, (batch, tokens)),
              "attention_mask": torch.ones(batch, tokens, dtype=torch.long)}

    def step() -> None:
        with training_dropout(model, dropout, fast):
            out = forward_range(model, 0, layers, inputs)                # start/end logits [batch, tokens]
            loss = out.start_logits.logsumexp(-1).mean() + out.end_logits.logsumexp(-1).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def forward_passes(layers: int, batch: int, tokens: int, rounds: int) -> dict[str, float]:
    """Median ms of one no-grad forward: under autocast, and on the bf16 inference copy."""
    torch.manual_seed(0)
    model = MPNetForQuestionAnswering(MPNetConfig(num_hidden_layers=layers)).eval()
    copy = inference_copy(model)
    inputs = {"input_ids": torch.randint(5, 30000, (batch, tokens)),
              "attention_mask": torch.ones(batch, tokens, dtype=torch.long)}
    with torch.no_grad():
        calls = {"autocast, fp32 weights": lambda: forward_range(model, 0, layers, inputs),
                 "Linear weights bf16 once": lambda: forward_range(copy, 0, layers, inputs)}
        return {name: 1000 * statistics.median(t) for name, t in in_turns(calls, rounds).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6, help="trained MPNet-base layers (default 6)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    set_precision(args.precision)
    variants = {"per-tensor AdamW, dropout 0.1": (False, 0.1, False), "fused AdamW, dropout 0.1": (True, 0.1, False),
                "fused, dropout 0.1, 16-bit masks": (True, 0.1, True), "fused AdamW, dropout off": (True, 0.0, True)}
    steps = {name: make_step(args.layers, args.batch, args.tokens, *v) for name, v in variants.items()}
    ms = {name: 1000 * statistics.median(t) for name, t in in_turns(steps, args.rounds).items()}  # ms per step
    base = ms["per-tensor AdamW, dropout 0.1"]
    print(f"{args.layers} layers, {args.batch} x {args.tokens} tokens, {precision_in_use()}, "
          f"{args.threads} threads, median of {args.rounds} steps each")
    for name, value in ms.items():
        print(f"  {name:32s} {value:8.1f} ms/step   {base / value:.2f}x the per-tensor step")
    if precision_in_use() == "bf16":
        passes = forward_passes(args.layers, args.batch, args.tokens, args.rounds)
        first = passes["autocast, fp32 weights"]
        print("one no-grad forward (cached layers, teacher targets):")
        for name, value in passes.items():
            print(f"  {name:32s} {value:8.1f} ms        {first / value:.2f}x autocast")


if __name__ == "__main__":
    main()
