"""Shadow traffic through the real HTTP stack: with `shadow_rate=1` every student request is
mirrored to the teacher and the agreement recorded in /metrics matches what the two models'
own endpoints answer; with 0 nothing is; the in-flight bound drops rather than queues."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from app.settings import Settings
from inference.squad_metric import f1 as squad_f1
from tests.conftest import serve, serve_app
from tests.polling import wait_for_async

session_loop = pytest.mark.asyncio(loop_scope="session")  # the session-wide `client` lives on that loop

TEXTS = ["a good film", "the plot was dull", "funny and warm", "not very good", "the worst movie"]


@pytest.fixture(scope="module")
async def shadowed(model_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(models_dir=model_repo, backends=["onnx"], threads=1, shadow_rate=1.0, shadow_max_items=4)
    async with serve(settings) as c:
        yield c


async def _samples(client: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    text = (await client.get("/metrics")).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) if family.name.startswith("distilserve_shadow")
        for s in family.samples
    }


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _settled(client: httpx.AsyncClient, name: str, labels: list[dict[str, str]], target: float) -> dict:
    """Shadow results land after the responses: poll until the counters add up (or 30 s: the
    shadow worker runs at the lowest CPU priority, slow on a busy machine)."""

    async def reached() -> dict | None:
        samples = await _samples(client)
        return samples if sum(_get(samples, name, **lab) for lab in labels) >= target else None

    return await wait_for_async(reached, timeout=30, interval=0.05, what=f"{name} to reach {target}")


async def _both(client: httpx.AsyncClient, body: dict) -> tuple[list, list]:
    """Teacher's and student's results for the same inputs, from POST /compare (never shadowed,
    and equal to each endpoint's answers: tests/app/test_compare.py)."""
    out = (await client.post("/compare", json=body)).json()
    return out["teacher"]["results"], out["student"]["results"]


@session_loop
async def test_every_student_request_is_mirrored_and_labels_compared(shadowed) -> None:
    before = await _samples(shadowed)
    agree = [{"task": "classification", "agree": v} for v in ("true", "false")]
    base = sum(_get(before, "distilserve_shadow_agreement_total", **a) for a in agree)
    for i, text in enumerate(TEXTS):
        assert (await shadowed.post("/classify", json={"inputs": [text]})).status_code == 200
        # shadow_max_items=4 < len(TEXTS): let each mirror land before the next request, or a
        # fast server outruns the low-priority shadow worker and the 5th is (rightly) dropped
        await _settled(shadowed, "distilserve_shadow_agreement_total", agree, base + i + 1)
    sent = _get(await _samples(shadowed), "distilserve_shadow_requests_total", task="classification", result="sent")
    assert sent - _get(before, "distilserve_shadow_requests_total", task="classification", result="sent") == len(TEXTS)
    after = await _settled(shadowed, "distilserve_shadow_agreement_total", agree, base + len(TEXTS))
    teacher, student = await _both(shadowed, {"task": "classification", "inputs": TEXTS})
    same = sum(t[0]["label"] == s[0]["label"] for t, s in zip(teacher, student, strict=False))
    got = {a["agree"]: _get(after, "distilserve_shadow_agreement_total", **a)
           - _get(before, "distilserve_shadow_agreement_total", **a) for a in agree}
    assert got == {"true": same, "false": len(TEXTS) - same}


@session_loop
async def test_span_f1_and_cosine_histograms(shadowed) -> None:
    context = "most penguins live in the southern hemisphere . paris is the capital of france ."
    questions = [{"question": q, "context": context} for q in ("where do penguins live?", "what is paris?")]
    texts = ["a man plays the guitar", "the quick brown fox"]
    before = await _samples(shadowed)
    assert (await shadowed.post("/qa", json={"inputs": questions})).status_code == 200
    assert (await shadowed.post("/embed", json={"inputs": texts})).status_code == 200
    await _settled(shadowed, "distilserve_shadow_span_f1_count", [{"task": "qa"}],
                   _get(before, "distilserve_shadow_span_f1_count", task="qa") + 2)
    after = await _settled(shadowed, "distilserve_shadow_embedding_cosine_count", [{"task": "embedding"}],
                           _get(before, "distilserve_shadow_embedding_cosine_count", task="embedding") + 2)
    teacher, student = await _both(shadowed, {"task": "qa", "inputs": questions})
    f1s = [squad_f1(s[0]["answer"], t[0]["answer"]) for t, s in zip(teacher, student, strict=False)]
    teacher, student = await _both(shadowed, {"task": "embedding", "inputs": texts})
    cosines = np.sum(np.asarray(teacher) * np.asarray(student), axis=1)  # both L2-normalised by default
    delta = {n: _get(after, n, task=t) - _get(before, n, task=t) for n, t in
             (("distilserve_shadow_span_f1_sum", "qa"), ("distilserve_shadow_embedding_cosine_sum", "embedding"))}
    assert delta["distilserve_shadow_span_f1_sum"] == pytest.approx(sum(f1s))
    assert delta["distilserve_shadow_embedding_cosine_sum"] == pytest.approx(float(cosines.sum()), abs=1e-5)


@session_loop
async def test_teacher_and_compare_requests_are_not_mirrored(shadowed) -> None:
    before = await _samples(shadowed)
    await shadowed.post("/classify", json={"inputs": TEXTS[:2], "model": "sst2-teacher"})
    await shadowed.post("/compare", json={"task": "classification", "inputs": TEXTS[:2]})
    after = await _samples(shadowed)
    name, sent = "distilserve_shadow_requests_total", {"task": "classification", "result": "sent"}
    assert _get(after, name, **sent) == _get(before, name, **sent)


@session_loop
async def test_requests_over_the_in_flight_bound_are_dropped_not_queued(shadowed) -> None:
    before = await _samples(shadowed)
    assert (await shadowed.post("/classify", json={"inputs": TEXTS})).status_code == 200  # 5 items > bound 4
    mid = await _samples(shadowed)
    assert (await shadowed.post("/classify", json={"inputs": TEXTS[:3]})).status_code == 200
    agree = [{"task": "classification", "agree": v} for v in ("true", "false")]
    base = sum(_get(mid, "distilserve_shadow_agreement_total", **a) for a in agree)
    after = await _settled(shadowed, "distilserve_shadow_agreement_total", agree, base + 3)  # nothing left in flight
    name = "distilserve_shadow_requests_total"
    for result, counts in (("dropped", (1, 0)), ("sent", (0, 1))):
        values = [_get(s, name, task="classification", result=result) for s in (before, mid, after)]
        assert (values[1] - values[0], values[2] - values[1]) == counts


@session_loop
async def test_with_thread_pools_the_shadow_runs_its_own_session(model_repo: Path) -> None:
    """threads unset: the teacher's shadow batcher makes its own single-threaded session; its
    answers must still be the teacher's."""
    texts = ["a man plays the guitar", "the quick brown fox", "paris"]
    settings = Settings(models_dir=model_repo, backends=["onnx"], shadow_rate=1.0)
    async with serve(settings) as c:
        before = await _samples(c)
        assert (await c.post("/embed", json={"inputs": texts})).status_code == 200
        after = await _settled(c, "distilserve_shadow_embedding_cosine_count", [{"task": "embedding"}],
                               _get(before, "distilserve_shadow_embedding_cosine_count", task="embedding") + len(texts))
        teacher, student = await _both(c, {"task": "embedding", "inputs": texts})
    cosines = np.sum(np.asarray(teacher) * np.asarray(student), axis=1)
    got = _get(after, "distilserve_shadow_embedding_cosine_sum", task="embedding") - \
        _get(before, "distilserve_shadow_embedding_cosine_sum", task="embedding")
    assert got == pytest.approx(float(cosines.sum()), abs=1e-5)


def _narrow_student(root: Path, model_repo: Path) -> Path:
    """The tiny embedding teacher plus a student of hidden size 16 (the teacher's is 32)."""
    from transformers import BertConfig, BertModel

    from tests.tiny import build_tokenizer, export_onnx, manifest, vocabulary

    (root / "embed-teacher").symlink_to(model_repo / "embed-teacher")
    folder = root / "embed-student"
    folder.mkdir()
    config = BertConfig(vocab_size=len(vocabulary()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128)
    model = BertModel(config).eval()
    build_tokenizer().save(str(folder / "tokenizer.json"))
    export_onnx(model, "embedding", folder / "model.onnx")
    spec = manifest("embedding", "student", "embed-student", 1, model)
    (folder / "manifest.json").write_text(json.dumps({**spec, "hidden_size": 16}))
    return root


@session_loop
async def test_embeddings_of_other_sizes_have_no_cosine(model_repo: Path, tmp_path: Path) -> None:
    """Vectors of 16 and 32 dimensions: /compare reports a null cosine, shadowing compares
    nothing (no cosine observed, no agreement verdict), and neither counts as a failure."""
    settings = Settings(models_dir=_narrow_student(tmp_path, model_repo), backends=["onnx"], threads=1, shadow_rate=1.0)
    async with serve_app(settings) as (app, c):
        compared = (await c.post("/compare", json={"task": "embedding", "inputs": ["a dog", "a cat"]})).json()
        assert [len(v) for v in compared["student"]["results"]] == [16, 16]
        assert compared["agreement"] == [{"cosine": None}, {"cosine": None}]
        assert compared["summary"] == {"cosine": None}
        before, batches = await _samples(c), await _shadow_batches(c)
        assert (await c.post("/embed", json={"inputs": ["a dog", "a cat"]})).status_code == 200
        hub = app.state.shadow

        async def answered() -> bool:  # in flight from the offer (before the response) until recorded
            return hub.in_flight == 0

        await wait_for_async(answered, what="the shadowed items' answers to be recorded")
        assert await _shadow_batches(c) > batches, "the shadowed items never reached the teacher"
        after = await _samples(c)
    changed = {k[0]: after[k] - before.get(k, 0.0) for k in after
               if after[k] != before.get(k, 0.0) and not k[0].endswith("_created")}
    assert changed == {"distilserve_shadow_requests_total": 1.0}, changed


async def _shadow_batches(client: httpx.AsyncClient) -> float:
    """Model calls made so far by the teachers' shadow batchers (their metrics say role="shadow")."""
    text = (await client.get("/metrics")).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("distilserve_batch_size_count{") and 'role="shadow"' in ln)


@session_loop
async def test_shadow_rate_zero_mirrors_nothing(client) -> None:
    """The session app runs with the default shadow_rate 0. A mirrored request is counted (sent
    or dropped) before its response is sent, and only a sent one is ever compared: so, right
    after the responses, no count may have moved (nothing to wait for)."""
    before = await _samples(client)
    for path, body in (("/classify", {"inputs": TEXTS}), ("/qa", {"question": "who?", "context": "the fox"}),
                       ("/embed", {"inputs": TEXTS}), ("/v1/embeddings", {"input": TEXTS})):
        assert (await client.post(path, json=body)).status_code == 200
    after = await _samples(client)
    for task in ("classification", "qa", "embedding"):
        for result in ("sent", "dropped"):
            labels = {"task": task, "result": result}
            name = "distilserve_shadow_requests_total"
            assert _get(after, name, **labels) == _get(before, name, **labels), labels


@pytest.mark.parametrize("value", ["1.5", "-0.1", "often"])
def test_shadow_rate_is_validated(value: str, monkeypatch: pytest.MonkeyPatch, model_repo: Path) -> None:
    monkeypatch.setenv("DISTILSERVE_MODELS_DIR", str(model_repo))
    monkeypatch.setenv("DISTILSERVE_SHADOW_RATE", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "shadow_rate" in str(info.value)
