"""Tiny pretrained bases and tiny data files for the training tests, made in the test session.

A base is what `fetch-pretrained` would give: a bare 4-layer encoder (BERT or MPNet, hidden 32)
plus a fast tokenizer, saved as an HF folder; a 4-layer teacher makes a 2-layer student.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.tiny import build_tokenizer, vocabulary

POSITIVE = ["good", "great", "fun", "funny", "best", "love"]
NEGATIVE = ["bad", "boring", "dull", "worst", "hate"]
FILLER = ["the", "film", "movie", "story", "actor", "plot", "was", "a", "very", "really"]
# Recipe overrides that make training on the tiny data take seconds, and the QA ones that fit its
# short contexts (build-defaults in tests/training/test_cli.py and in CI's tests/ci_data.py).
TINY = ["batch_size=8", "teacher_epochs=2", "student_epochs=2", "threads=1", "min_words=0",
        "teacher_train_top=2", "student_train_top=1", "eval_backend=onnx"]
TINY_QA = ["qa.heldout_articles=1", "qa.max_length=40", "qa.doc_stride=16", "qa.serve_max_length=64"]


def tiny_encoder(arch: str, layers: int = 4, seed: int = 0) -> torch.nn.Module:
    """A random bare encoder; MPNet's pad id is the tokenizer's [PAD] = 0."""
    import transformers as tf

    common = dict(vocab_size=len(vocabulary()), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=64)
    torch.manual_seed(seed)
    if arch == "bert":
        return tf.BertModel(tf.BertConfig(max_position_embeddings=128, **common)).eval()
    return tf.MPNetModel(tf.MPNetConfig(max_position_embeddings=130, pad_token_id=0, **common)).eval()


def save_base(folder: Path, arch: str) -> Path:
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tiny_encoder(arch).save_pretrained(folder, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), pad_token="[PAD]", unk_token="[UNK]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                            model_max_length=128).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {arch: save_base(root / arch, arch) for arch in ("bert", "mpnet")}


def sentence(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.sample(FILLER, 3) + [rng.choice(words)] + rng.sample(FILLER, 2))


def write_sentiment(path: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for i in range(rows):
        label = i % 2
        lines.append(f"{sentence(rng, POSITIVE if label else NEGATIVE)}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_stsb(path: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["sentence1\tsentence2\tscore"]
    for i in range(rows):
        a = sentence(rng, POSITIVE)
        b = a if i % 3 == 0 else sentence(rng, NEGATIVE)
        lines.append(f"{a}\t{b}\t{5.0 if a == b else rng.uniform(0, 2):.2f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_squad(path: Path, articles: int, seed: int) -> Path:
    rng = random.Random(seed)
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(3):
            city = rng.choice(["paris", "antarctica", "city"])
            context = f"the {rng.choice(FILLER)} is in {city} . people live there for many years ."
            start = context.index(city)
            qas = [{"id": f"q{a}-{p}-{k}", "question": "where is the film ?",
                    "answers": [{"text": city, "answer_start": start}]} for k in range(2)]
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": data}, indent=1))
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "sst2_train": write_sentiment(root / "train.tsv", 96, 0),
        "sst2_dev": write_sentiment(root / "dev.tsv", 24, 1),
        "stsb_train": write_stsb(root / "stsb_train.tsv", 40, 2),
        "stsb_dev": write_stsb(root / "stsb_dev.tsv", 18, 3),
        "squad": write_squad(root / "squad.json", 4, 4),
    }
