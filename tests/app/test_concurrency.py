"""Many concurrent mixed requests, batched together, each get the answer they get alone.

Batched results differ from solo ones only by float reassociation in padded matrix products:
labels, spans and token counts must be identical, scores and vectors equal within 1e-5."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

WORDS = ["the", "a", "good", "bad", "film", "movie", "story", "plot", "actor", "funny", "dull", "boring", "great",
         "love", "hate", "very", "really"]
CONTEXT = " ".join(f"the river {i} runs by the old city of paris in france" for i in range(6))


def _requests(n: int) -> list[tuple[str, dict]]:
    rng = random.Random(7)
    out: list[tuple[str, dict]] = []
    for i in range(n):
        text = " ".join(rng.choices(WORDS, k=rng.randint(1, 70)))
        kind = i % 4
        if kind == 0:
            out.append(("/classify", {"inputs": [text, text[: len(text) // 2] or "a"], "top_k": None}))
        elif kind == 1:
            out.append(("/embed", {"inputs": text, "model": "embed-teacher"}))
        elif kind == 2:
            body = {"question": f"what city {i}?", "context": CONTEXT[: 60 + 7 * i], "top_k": 2, "doc_stride": 12}
            out.append(("/qa", body))
        else:
            out.append(("/classify", {"inputs": [[text, "the film"]], "model": "sst2-teacher@torch", "top_k": None}))
    return out


def _assert_same(path: str, alone: dict, together: dict) -> None:
    assert together["items"] == alone["items"]
    assert together["model"] == alone["model"]
    if path == "/embed":
        np.testing.assert_allclose(together["embeddings"], alone["embeddings"], atol=1e-5)
        return
    for a, b in zip(alone["results"], together["results"], strict=False):
        assert [x.get("label", x.get("answer")) for x in a] == [x.get("label", x.get("answer")) for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-5)


async def _batch_stats(client, model: str) -> tuple[float, float]:
    """(sequences, model calls) so far for `model`, from its batch-size histogram."""
    text = (await client.get("/metrics")).text
    tag = f'model="{model}",role="student"}}'
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("distilserve_batch_size_") and tag in line and "backend=\"onnx\"" in line}
    return values["distilserve_batch_size_sum"], values["distilserve_batch_size_count"]


async def _metric(client, name: str, model: str) -> float:
    text = (await client.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and f'model="{model}"' in line)


async def test_concurrent_mixed_requests_match_solo_answers(client) -> None:
    requests = _requests(48)
    alone = [(await client.post(path, json=body)).json() for path, body in requests]
    before = await _batch_stats(client, "sst2-student")
    responses = await asyncio.gather(*(client.post(path, json=body) for path, body in requests))
    assert all(r.status_code == 200 for r in responses)
    after = await _batch_stats(client, "sst2-student")
    sequences, calls = after[0] - before[0], after[1] - before[1]
    assert sequences == 24
    assert calls < sequences
    for (path, _), solo, r in zip(requests, alone, responses, strict=False):
        _assert_same(path, solo, r.json())


def _padded(lengths: list[int], batch: int, sort: bool) -> int:
    """Padded tokens of batches of `batch` items cut from `lengths` (sorted or as they came)."""
    order = sorted(lengths) if sort else lengths
    return sum(len(g) * max(g) for g in (order[i:i + batch] for i in range(0, len(order), batch)))


async def test_length_sorting_pads_less(model_repo, tmp_path) -> None:
    """Bimodal lengths queued together (one request's items are queued atomically, and with no
    fill wait the worker takes them as they stand): sorted batching keeps short and long inputs
    apart, so it pads (and computes) far fewer tokens than first-come batching of the same
    items. Asserted on the padded tokens the batcher records per model call
    (`distilserve_batch_tokens`), which depend on the batching policy only, not on timing."""
    from app.settings import Settings
    from tests.conftest import serve

    (tmp_path / "sst2-student").symlink_to(model_repo / "sst2-student")
    texts = [("good " * (60 if i % 4 == 0 else 2)).strip() for i in range(64)]
    padded, results, lengths = {}, {}, {}
    for sort in (True, False):
        settings = Settings(models_dir=tmp_path, sort_by_length=sort, max_batch_size=8, max_wait_ms=0)
        async with serve(settings) as c:
            before = await _metric(c, "distilserve_batch_tokens_sum", "sst2-student")
            r = await c.post("/classify", json={"inputs": texts, "top_k": None})
            assert r.status_code == 200
            padded[sort] = await _metric(c, "distilserve_batch_tokens_sum", "sst2-student") - before
            results[sort] = r.json()["results"]
            lengths[sort] = [item["tokens"] for item in r.json()["items"]]
    assert lengths[True] == lengths[False]
    assert sorted(set(lengths[True])) == [4, 62]
    expected = {sort: _padded(lengths[sort], 8, sort) for sort in (True, False)}
    assert padded == expected == {True: 1184, False: 3968}, padded  # 6x8x4 + 2x8x62 vs 8x8x62
    for a, b in zip(results[True], results[False], strict=False):  # same answers either way
        assert [x["label"] for x in a] == [x["label"] for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-5)


async def test_windows_spread_over_model_workers_give_the_serial_answer(model_repo, tmp_path) -> None:
    """One QA request whose context splits into many windows, one window per model call
    (max_batch_size=1): with two model workers the calls run on both, in any order, and the
    answer and its per-item counts are exactly those of one worker running them in turn."""
    from app.settings import Settings
    from tests.conftest import serve

    (tmp_path / "squad-student").symlink_to(model_repo / "squad-student")
    body = {"question": "what city?", "context": CONTEXT * 3, "top_k": 3, "doc_stride": 8}
    out = {}
    for workers in (1, 2):
        settings = Settings(models_dir=tmp_path, max_batch_size=1, model_workers=workers, max_queue_wait_ms=600_000)
        async with serve(settings) as c:
            before = (await _metric(c, "distilserve_batch_size_count", "squad-student"))
            responses = await asyncio.gather(*(c.post("/qa", json=body) for _ in range(4)))
            calls = await _metric(c, "distilserve_batch_size_count", "squad-student") - before
        assert all(r.status_code == 200 for r in responses)
        out[workers] = [r.json() for r in responses]
        windows = out[workers][0]["items"][0]["windows"]
        assert windows > 4
        assert calls == 4 * windows
    assert all(r == out[1][0] for r in out[1])
    for serial, parallel in zip(out[1], out[2], strict=False):
        assert parallel["items"] == serial["items"]
        assert [a["answer"] for a in parallel["results"][0]] == [a["answer"] for a in serial["results"][0]]
        scores = [a["score"] for a in serial["results"][0]]
        assert [a["score"] for a in parallel["results"][0]] == pytest.approx(scores, abs=1e-6)


async def test_a_request_that_fits_one_call_is_shared_over_idle_workers(model_repo, tmp_path) -> None:
    """32 sentences in one request, every worker idle: with two model workers they run as two
    concurrent calls of 16 (one per worker, each on its share of the cores), with one worker as
    one call of 32; the vectors are the same either way."""
    from app.settings import Settings
    from tests.conftest import serve

    (tmp_path / "embed-student").symlink_to(model_repo / "embed-student")
    body = {"inputs": [f"sentence number {i} of the request" for i in range(32)]}
    out = {}
    for workers in (1, 2):
        async with serve(Settings(models_dir=tmp_path, model_workers=workers)) as c:
            before = await _metric(c, "distilserve_batch_size_count", "embed-student")
            response = await c.post("/embed", json=body)
            calls = await _metric(c, "distilserve_batch_size_count", "embed-student") - before
            small = await c.post("/embed", json={"inputs": body["inputs"][:12]})  # under 2 x 8: one call
            small_calls = await _metric(c, "distilserve_batch_size_count", "embed-student") - before - calls
        assert response.status_code == small.status_code == 200
        assert (calls, small_calls) == ((1, 1) if workers == 1 else (2, 1))
        out[workers] = response.json()
    np.testing.assert_allclose(out[2]["embeddings"], out[1]["embeddings"], atol=1e-5)
    assert out[2]["items"] == out[1]["items"]
