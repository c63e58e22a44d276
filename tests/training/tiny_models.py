"""Tiny model folders for the export / evaluate tests: 2-layer BERT (uses token_type_ids) and
2-layer MPNet (does not), built offline with the shared tiny WordPiece tokenizer. Folders have
HF weights, tokenizer.json and a manifest but no ONNX: producing that is what is under test."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny import build_tokenizer, vocabulary

LABELS = {0: "negative", 1: "positive"}


def build_tiny(arch: str, task: str, seed: int = 0) -> torch.nn.Module:
    """A random 2-layer encoder (hidden 32, FFN 64) with `task`'s head."""
    import transformers as tf

    common = dict(vocab_size=len(vocabulary()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    if arch == "bert":
        config = tf.BertConfig(max_position_embeddings=128, **common)
    else:  # MPNet: pad id must be the tokenizer's [PAD]=0, positions start after it
        config = tf.MPNetConfig(max_position_embeddings=130, pad_token_id=0, **common)
    classes = {"classification": "ForSequenceClassification", "qa": "ForQuestionAnswering", "embedding": "Model"}
    prefix = "Bert" if arch == "bert" else "MPNet"
    torch.manual_seed(seed)
    return getattr(tf, prefix + classes[task])(config).eval()


def save_tiny(root: Path, arch: str, task: str, manifest: bool = True, seed: int = 0) -> Path:
    """Write a model folder `root/<arch>-<task>`; `manifest=False` gives a plain HF folder."""
    folder = root / f"{arch}-{task}"
    folder.mkdir(parents=True, exist_ok=True)
    model = build_tiny(arch, task, seed)
    model.save_pretrained(folder, safe_serialization=True)
    build_tokenizer().save(str(folder / "tokenizer.json"))
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({
            "schema_version": 1, "name": folder.name, "task": task, "role": "teacher",
            "architecture": type(model).__name__, "model_type": arch, "layers": 2, "hidden_size": 32,
            "labels": {str(k): v for k, v in LABELS.items()} if task == "classification" else None,
            "max_length": 48 if task == "qa" else 64,
            **({"pooling": "mean", "normalize": True} if task == "embedding" else {}),
        }))
    return folder
