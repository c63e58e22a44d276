"""Tiny models for the test session: a 2-layer teacher and a 1-layer student per task, BERT
config (hidden 32), a WordPiece vocabulary built from a word list, random weights from a fixed
seed, saved as a model repository folder (manifest.json, HF files, tokenizer.json, ONNX).

The ONNX export is done here with `torch.onnx.export` following models/README.md's IO contract
(training's exporter did not exist when these tests were written)."""

from __future__ import annotations

import json
import string
import warnings
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedModel

from training.manifest import readable_by_all

WORDS = ["the", "a", "an", "of", "to", "and", "in", "is", "was", "it", "that", "for", "on", "with", "as", "by", "at",
         "from", "film", "movie", "good", "bad", "great", "boring", "funny", "dull", "fun", "story", "actor", "plot",
         "best", "worst", "love", "hate", "who", "what", "where", "when", "why", "how", "penguins", "live", "southern",
         "hemisphere", "antarctica", "paris", "capital", "france", "river", "city", "people", "man", "woman", "guitar",
         "music", "plays", "playing", "dog", "cat", "quick", "brown", "fox", "jumps", "over", "lazy", "day", "night",
         "year", "not", "very", "really", "too", "much", "more", "most", "some", "many", "one", "two", "three", "new",
         "old", "big", "small", "long", "short"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TASKS = {"classification": "sst2", "qa": "squad", "embedding": "embed"}


def vocabulary() -> dict[str, int]:
    """Specials, the word list, single characters and their ## continuations (so any ASCII
    text tokenizes without [UNK] floods)."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = SPECIALS + WORDS + list(chars) + [f"##{c}" for c in chars]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def build_tokenizer() -> Tokenizer:
    vocab = vocabulary()
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return tok


def build_model(task: str, layers: int, seed: int) -> PreTrainedModel:
    from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertModel

    config = BertConfig(
        vocab_size=len(vocabulary()), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(seed)
    heads = {"classification": BertForSequenceClassification, "qa": BertForQuestionAnswering, "embedding": BertModel}
    cls = heads[task]
    return cls(config).eval()


class _Named(torch.nn.Module):
    """Returns the contract's outputs as a plain tuple for the exporter."""

    def __init__(self, model: torch.nn.Module, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(out[name] for name in self.outputs)


def export_onnx(model: torch.nn.Module, task: str, path: Path) -> None:
    """fp32 export per the IO contract: int64 [batch, sequence] inputs, dynamic axes."""
    from inference.backends import OUTPUT_NAMES

    outputs = OUTPUT_NAMES[task]
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    sample = (torch.ones(2, 8, dtype=torch.long),) * 2 + (torch.zeros(2, 8, dtype=torch.long),)
    axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
    axes.update({n: {0: "batch", 1: "sequence"} if n != "logits" else {0: "batch"} for n in outputs})
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Named(model, outputs), sample, str(path), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )


def quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def manifest(task: str, role: str, name: str, layers: int, model: torch.nn.Module) -> dict:
    prefix = TASKS[task]
    return {
        "schema_version": 1, "name": name, "task": task, "role": role,
        "teacher": f"{prefix}-teacher" if role == "student" else None,
        "student": f"{prefix}-student" if role == "teacher" else None,
        "architecture": type(model).__name__, "model_type": "bert", "layers": layers, "hidden_size": 32,
        "params": sum(p.numel() for p in model.parameters()),
        "labels": {"0": "negative", "1": "positive"} if task == "classification" else None,
        "max_length": 48 if task == "qa" else 64,
        "pooling": "mean" if task == "embedding" else None,
        "normalize": True if task == "embedding" else None,
        "quality": {"tiny-dev": {"accuracy": 0.5, "backend": "torch", "rows": 10}},
        "seed": 0,
    }


def build_model_dir(root: Path, task: str, role: str, seed: int = 0, int8: bool = True) -> Path:
    layers = 2 if role == "teacher" else 1
    name = f"{TASKS[task]}-{role}"
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(task, layers, seed + layers)
    model.save_pretrained(folder, safe_serialization=True)
    build_tokenizer().save(str(folder / "tokenizer.json"))
    export_onnx(model, task, folder / "model.onnx")
    if int8:
        quantize(folder / "model.onnx", folder / "model.int8.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest(task, role, name, layers, model), indent=2))
    readable_by_all(folder)  # safetensors writes 0600; the service's container runs as another user
    return folder


def build_repository(root: Path) -> Path:
    """All six models (three tasks x teacher/student) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        for role in ("teacher", "student"):
            build_model_dir(root, task, role)
    return root


if __name__ == "__main__":  # `python -m tests.tiny --out DIR`, used by .ci/prometheus_check.sh
    import argparse

    parser = argparse.ArgumentParser(description="Build the tiny test model repository into a folder.")
    parser.add_argument("--out", type=Path, required=True, help="folder to create the six models in")
    print(build_repository(parser.parse_args().out))
