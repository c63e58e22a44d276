"""POST /embed and POST /v1/embeddings."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.app import reference

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_normalised_embeddings_have_unit_norm(client) -> None:
    r = await client.post("/embed", json={"inputs": ["a man plays the guitar", "dog"]})
    assert r.status_code == 200, r.text
    body = r.json()
    vectors = np.array(body["embeddings"])
    assert body["dim"] == 32
    assert vectors.shape == (2, 32)
    assert body["model"] == "embed-student"
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert [i["tokens"] for i in body["items"]] == [7, 3]


async def test_unnormalised_is_the_masked_mean_of_token_states(client, model_repo: Path) -> None:
    text = "the quick brown fox"
    r = await client.post("/embed", json={"inputs": text, "normalize": False, "model": "embed-teacher"})
    expected = reference.mean_embedding(model_repo / "embed-teacher", text)
    np.testing.assert_allclose(r.json()["embeddings"][0], expected, atol=1e-5)


async def test_openai_shape_and_base64(client, model_repo: Path) -> None:
    payload = {"input": ["hello world", "good day"], "model": "student"}
    floats = (await client.post("/v1/embeddings", json=payload)).json()
    assert floats["object"] == "list"
    assert floats["model"] == "embed-student"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    tokenizer = Tokenizer.from_file(str(model_repo / "embed-student" / "tokenizer.json"))
    tokens = sum(len(tokenizer.encode(text).ids) for text in payload["input"])
    assert tokens == 16  # [CLS] h ##e ##l ##l ##o w ##o ##r ##l ##d [SEP] + [CLS] good day [SEP]
    assert floats["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    packed = (await client.post("/v1/embeddings", json={**payload, "encoding_format": "base64"})).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][1]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][1]["embedding"], atol=1e-7)
