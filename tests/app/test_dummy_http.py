"""/classify, /embed, /v1/embeddings and /qa through the real HTTP stack on the deterministic
dummy backend (tests/dummy_backend.py): every number is computed here from the tokenizer's ids
and the dummy's documented formula, so the service's whole path - tokenisation, batching,
padding, pooling, softmax, span decoding, response shaping - is checked to exact values."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from app.settings import Settings
from tests.conftest import serve
from tests.dummy_backend import HIDDEN, dummy_source, write_folder

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODELS = {"cls-dummy": "classification", "embed-dummy": "embedding", "qa-dummy": "qa"}


@pytest.fixture(scope="module")
def dummy_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dummy-models")
    for name, task in MODELS.items():
        write_folder(root, name, task, max_length=48 if task == "qa" else 64)
    return root


@pytest.fixture(scope="module")
async def dummy(dummy_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(models_dir=dummy_repo, backends=["onnx"], threads=1, model_workers=1)
    async with serve(settings, backend_source=dummy_source()) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(dummy_repo: Path) -> Tokenizer:
    return Tokenizer.from_file(str(dummy_repo / "cls-dummy" / "tokenizer.json"))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _class_scores(ids: list[int]) -> dict[str, float]:
    """The dummy's logits [n / 8, mean(ids) / 16], softmaxed."""
    probs = _softmax(np.array([len(ids) / 8, sum(ids) / len(ids) / 16]))
    return {"negative": float(probs[0]), "positive": float(probs[1])}


def _embedding(ids: list[int], normalize: bool = True) -> np.ndarray:
    """Mean over the tokens of cos((id + 1) * (j + 1) / 7), then (optionally) L2-normalised."""
    states = np.array([[math.cos((x + 1) * (j + 1) / 7) for j in range(HIDDEN)] for x in ids])
    mean = states.mean(axis=0)
    return mean / np.linalg.norm(mean) if normalize else mean


def _qa_answer(tokenizer: Tokenizer, question: str, context: str) -> dict:
    """Start at the context token with the largest id, end one token after it; the score is
    p_start * p_end with each softmax taken over the context tokens and [CLS] (HF decoding)."""
    enc = tokenizer.encode(question, context)
    ids = np.array(enc.ids, dtype=np.float64)
    context_at = [i for i, sid in enumerate(enc.sequence_ids) if sid == 1]
    start = max(context_at, key=lambda i: ids[i])
    end = start + 1
    assert end in context_at, "pick a context whose largest id is not its last token"
    keep = np.zeros(len(ids), dtype=bool)
    keep[context_at + [0]] = True
    end_logits = np.concatenate([[0.0], ids[:-1]]) / 4
    p_start = _softmax(np.where(keep, ids / 4, -10000.0))
    p_end = _softmax(np.where(keep, end_logits, -10000.0))
    begin, finish = enc.offsets[start][0], enc.offsets[end][1]
    return {"answer": context[begin:finish], "start": begin, "end": finish, "score": float(p_start[start] * p_end[end])}


async def test_the_dummy_models_are_served_on_the_configured_kind(dummy) -> None:
    models = {m["name"]: m for m in (await dummy.get("/models")).json()["models"]}
    assert {name: m["task"] for name, m in models.items()} == MODELS
    assert {m["backend"] for m in models.values()} == {"onnx"}


async def test_classify_scores_are_the_formula_of_the_ids(dummy, tokenizer: Tokenizer) -> None:
    texts = ["good", "a good film with a great story", "the plot was dull and the actor was bad"]
    r = await dummy.post("/classify", json={"inputs": texts, "top_k": None, "model": "cls-dummy"})
    assert r.status_code == 200, r.text
    body = r.json()
    for text, result in zip(texts, body["results"], strict=True):
        expected = _class_scores(tokenizer.encode(text).ids)
        assert {d["label"]: d["score"] for d in result} == pytest.approx(expected, abs=1e-6), text
        assert [d["score"] for d in result] == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-6)
    # "good" is [CLS]=2, good=25, [SEP]=3: logits [3/8, 10/16], so p(positive) = sigmoid(1/4)
    assert body["results"][0][0] == {"label": "positive", "score": pytest.approx(1 / (1 + math.exp(-0.25)), abs=1e-6)}
    lengths = [len(tokenizer.encode(t).ids) for t in texts]
    assert body["items"] == [{"tokens": n, "truncated": False} for n in lengths]
    assert body["usage"] == {"tokens": sum(lengths)}


async def test_classify_text_pairs_and_truncation(dummy, tokenizer: Tokenizer) -> None:
    pair = ["the film was good", "the actor was bad"]
    long_text = " ".join(["great"] * 100)
    r = await dummy.post("/classify", json={"inputs": [pair, long_text], "top_k": 1, "model": "cls-dummy"})
    assert r.status_code == 200, r.text
    body = r.json()
    pair_ids = tokenizer.encode(*pair).ids
    expected = _class_scores(pair_ids)
    label = max(expected, key=expected.get)
    assert body["results"][0] == [{"label": label, "score": pytest.approx(expected[label], abs=1e-6)}]
    great = tokenizer.token_to_id("great")
    cut = [tokenizer.token_to_id("[CLS]"), *[great] * 62, tokenizer.token_to_id("[SEP]")]  # max_length 64
    expected = _class_scores(cut)
    assert body["results"][1][0]["score"] == pytest.approx(max(expected.values()), abs=1e-6)
    assert body["items"] == [{"tokens": len(pair_ids), "truncated": False}, {"tokens": 64, "truncated": True}]


async def test_embed_vectors_are_the_formula_of_the_ids(dummy, tokenizer: Tokenizer) -> None:
    texts = ["a man plays the guitar", "dog", "the quick brown fox jumps over the lazy dog"]
    body = (await dummy.post("/embed", json={"inputs": texts, "model": "embed-dummy"})).json()
    assert body["dim"] == HIDDEN
    expected = np.stack([_embedding(tokenizer.encode(t).ids) for t in texts])
    np.testing.assert_allclose(body["embeddings"], expected, atol=1e-6)
    raw = (await dummy.post("/embed", json={"inputs": texts, "model": "embed-dummy", "normalize": False})).json()
    unnormalised = [_embedding(tokenizer.encode(t).ids, normalize=False) for t in texts]
    np.testing.assert_allclose(raw["embeddings"], unnormalised, atol=1e-6)
    assert [i["tokens"] for i in body["items"]] == [len(tokenizer.encode(t).ids) for t in texts]


async def test_openai_embeddings_count_the_tokenizer_tokens(dummy, tokenizer: Tokenizer) -> None:
    texts = ["hello world", "good day"]
    body = (await dummy.post("/v1/embeddings", json={"input": texts, "model": "embed-dummy"})).json()
    tokens = sum(len(tokenizer.encode(t).ids) for t in texts)
    assert tokens == 16  # [CLS] h ##e ##l ##l ##o w ##o ##r ##l ##d [SEP] + [CLS] good day [SEP]
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    np.testing.assert_allclose([d["embedding"] for d in body["data"]],
                               [_embedding(tokenizer.encode(t).ids) for t in texts], atol=1e-6)


async def test_qa_answer_is_the_span_after_the_largest_id(dummy, tokenizer: Tokenizer) -> None:
    items = [
        {"question": "where do penguins live?", "context": "penguins live in antarctica in the southern hemisphere"},
        {"question": "what jumps?", "context": "at night the quick brown fox jumps over the lazy dog"},
    ]
    r = await dummy.post("/qa", json={"inputs": items, "model": "qa-dummy"})
    assert r.status_code == 200, r.text
    body = r.json()
    for item, result in zip(items, body["results"], strict=True):
        expected = _qa_answer(tokenizer, item["question"], item["context"])
        assert result == [{**expected, "score": pytest.approx(expected["score"], abs=1e-6)}]
        assert item["context"][result[0]["start"]:result[0]["end"]] == result[0]["answer"]
    # antarctica (49) and night (73) are the largest ids of their contexts
    assert [result[0]["answer"] for result in body["results"]] == ["antarctica in", "night the"]
    tokens = [len(tokenizer.encode(i["question"], i["context"]).ids) for i in items]
    assert [(i["tokens"], i["windows"]) for i in body["items"]] == [(n, 1) for n in tokens]
