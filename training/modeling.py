"""Loading Hugging Face encoders per task, and running part of their layer stack.

Distillation on 2 CPU cores only fits the budget if frozen lower layers run once per example
and their outputs are cached; ``layer_range`` lets the *same* HF model object run layers
[start, end) - with its own head on top - so the saved model is always a standard HF model.
Works for BERT-like (``encoder.layer``) and DistilBERT (``transformer.layer``) stacks, MPNet
included.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)

from inference.backends.torch import linear_weights_to

_COMPUTE_DTYPE: torch.dtype | None = None  # None: plain fp32; else the CPU autocast dtype


def bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def set_precision(name: str) -> str:
    """'fp32'; 'bf16': CPU autocast, matmuls in bfloat16 (1.8-1.9x faster training and cached
    passes on the 2-core AVX512-BF16 machine), while weights, optimizer state, losses and the
    saved model stay fp32; 'auto': bf16 where the CPU has it natively. Returns what is used."""
    global _COMPUTE_DTYPE
    if name not in ("fp32", "bf16", "auto"):
        raise ValueError(f"precision must be fp32, bf16 or auto, not {name!r}")
    used = ("bf16" if bf16_native() else "fp32") if name == "auto" else name
    _COMPUTE_DTYPE = torch.bfloat16 if used == "bf16" else None
    return used


def precision_in_use() -> str:
    """What training runs in now (recorded in each manifest)."""
    return "fp32" if _COMPUTE_DTYPE is None else "bf16"


def inference_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The model for a no-grad pass (frozen-layer caches, teacher targets): under bf16 a copy
    whose Linear layers hold bfloat16 weights, else the model itself.

    Why: autocast casts every Linear weight from fp32 to bf16 on every call; the copy has them
    cast once. Everything else is as autocast runs it (it casts the activations for the matmuls
    and keeps the residual stream and LayerNorms fp32), so the outputs are bit-identical. On
    the 2-core AMX Xeon (2026-12-06), the quick QA teacher's 12 layers on 8 x 128 tokens: 218 ms
    against 282 ms. A fully bf16 copy (211 ms) was tried and dropped: its bf16 residual stream
    moved the cached features that the trained layers learn from, and the QA teacher built on
    them lost 4 F1 on validation (59.5 against 63.7)."""
    if _COMPUTE_DTYPE is None:
        return model
    copied = linear_weights_to(copy.deepcopy(model).eval(), _COMPUTE_DTYPE)
    assert isinstance(copied, PreTrainedModel)
    return copied


def _fp32(value: object) -> object:
    """Model outputs back in fp32 (logits, hidden states), so losses and caches see one dtype."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, tuple):
        return tuple(_fp32(v) for v in value)
    return value


TASK_CLASSES = {
    "classification": AutoModelForSequenceClassification,
    "qa": AutoModelForQuestionAnswering,
    "embedding": AutoModel,
}


def load_model(source: str | Path, task: str, labels: list[str] | None = None) -> PreTrainedModel:
    """Any HF folder or hub id as a model for ``task`` (a new head is initialised if absent)."""
    kwargs: dict = {}
    if task == "classification" and labels:
        config = AutoConfig.from_pretrained(source)
        if getattr(config, "num_labels", None) != len(labels) or "ForSequence" not in str(config.architectures):
            kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                      "label2id": {name: i for i, name in enumerate(labels)}}
    return TASK_CLASSES[task].from_pretrained(str(source), **kwargs)


def base_of(model: PreTrainedModel) -> nn.Module:
    """The bare encoder inside a task model (``model.bert``, ``model.mpnet``, ...), or the model."""
    return getattr(model, model.base_model_prefix, model)


def stack_of(model: PreTrainedModel) -> tuple[nn.Module, str]:
    """(module owning the layer list, attribute name): ``encoder.layer`` or ``transformer.layer``."""
    base = base_of(model)
    owner = getattr(base, "encoder", None) or getattr(base, "transformer", None)
    if owner is None or not isinstance(getattr(owner, "layer", None), nn.ModuleList):
        raise TypeError(f"unsupported architecture {type(model).__name__}: no encoder.layer list")
    return owner, "layer"


def num_layers(model: PreTrainedModel) -> int:
    owner, attr = stack_of(model)
    return len(getattr(owner, attr))


class Passthrough(nn.Module):
    """Stands in for the embedding module: the cached hidden states *are* the layer input.

    It holds an empty parameter of the embeddings' dtype: HF models take their `dtype` (and so
    the attention mask's) from their first parameter, which would otherwise be a layer's - bf16
    in an `inference_copy`, where a bf16 mask then turned the attention softmax bf16 too."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)

    def forward(self, *args: object, inputs_embeds: torch.Tensor | None = None,
                input_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else input_embeds
        if hidden is None and args and isinstance(args[-1], torch.Tensor) and args[-1].dim() == 3:
            hidden = args[-1]  # DistilBERT passes input_embeds positionally
        if hidden is None or hidden.dim() != 3:
            shape = "none" if hidden is None else list(hidden.shape)
            raise ValueError(f"Passthrough needs hidden states [batch, seq, hidden] as inputs_embeds, got {shape}")
        return hidden


@contextlib.contextmanager
def layer_range(model: PreTrainedModel, start: int, end: int) -> Iterator[PreTrainedModel]:
    """Temporarily make ``model`` run only layers [start, end).

    start > 0: the embeddings are bypassed, so feed ``inputs_embeds=<hidden after layer start>``.
    The head (classifier / qa_outputs / none) still runs on top. Restored on exit.
    """
    owner, attr = stack_of(model)
    base = base_of(model)
    layers, embeddings = getattr(owner, attr), base.get_submodule("embeddings")
    if not 0 <= start < end <= len(layers):
        raise ValueError(f"bad layer range [{start}, {end}) of a {len(layers)}-layer model")
    setattr(owner, attr, nn.ModuleList(list(layers)[start:end]))
    if start > 0:
        base.embeddings = Passthrough(next(embeddings.parameters()).dtype)
    try:
        yield model
    finally:
        setattr(owner, attr, layers)
        base.embeddings = embeddings


def forward_range(model: PreTrainedModel, start: int, end: int, batch: dict[str, torch.Tensor],
                  hidden: torch.Tensor | None = None, head: bool = True):
    """Run layers [start, end) on token inputs (start == 0) or cached ``hidden`` (start > 0).

    head=True returns the task model's output (logits...); head=False the bare encoder's
    last_hidden_state [batch, seq, hidden] after layer end-1.
    """
    with layer_range(model, start, end):
        target = model if head else base_of(model)
        kwargs = {"attention_mask": batch["attention_mask"], "output_hidden_states": head}
        if start == 0:
            kwargs["input_ids"] = batch["input_ids"]
            if "token_type_ids" in batch and _takes_token_types(model):
                kwargs["token_type_ids"] = batch["token_type_ids"]
        else:
            kwargs["inputs_embeds"] = hidden
        with torch.autocast("cpu", dtype=_COMPUTE_DTYPE or torch.bfloat16, enabled=_COMPUTE_DTYPE is not None):
            out = target(**kwargs)
        if _COMPUTE_DTYPE is not None:
            for key in list(out.keys()):
                out[key] = _fp32(out[key])
        return out if head else out.last_hidden_state


def _takes_token_types(model: PreTrainedModel) -> bool:
    return getattr(model.config, "type_vocab_size", 0) > 0 and model.config.model_type not in ("mpnet", "distilbert")


def freeze_below(model: PreTrainedModel, first_trainable: int) -> list[nn.Parameter]:
    """Freeze embeddings and layers below ``first_trainable``; return the parameters to train."""
    owner, attr = stack_of(model)
    layers = getattr(owner, attr)
    embeddings: nn.Module = base_of(model).get_submodule("embeddings")
    frozen = {id(p) for p in embeddings.parameters()}
    for layer in list(layers)[:first_trainable]:
        frozen |= {id(p) for p in layer.parameters()}
    trainable = []
    for parameter in model.parameters():
        parameter.requires_grad = id(parameter) not in frozen
        if parameter.requires_grad:
            trainable.append(parameter)
    return trainable


_OFFSET_POSITIONS = ("mpnet", "roberta", "xlm-roberta", "camembert")  # positions start after the pad id


def position_limit(config: object) -> int | None:
    """How many tokens the model's position table can take (None: no table, no limit)."""
    table = getattr(config, "max_position_embeddings", None)
    if table is None:
        return None
    offsets = getattr(config, "model_type", "") in _OFFSET_POSITIONS
    offset = (getattr(config, "pad_token_id", None) or 0) + 1 if offsets else 0
    return table - offset


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
