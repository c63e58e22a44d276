"""POST /compare through the real HTTP stack: both outputs are what each model's own endpoint
returns, and the agreement figures are recomputed here from those endpoint answers."""

from __future__ import annotations

import numpy as np
import pytest

from inference.squad_metric import exact_match
from inference.squad_metric import f1 as squad_f1

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = ["a good film with a great story", "the plot was dull and boring", "funny", "not very good"]
CONTEXT = "most penguins live in the southern hemisphere . the capital of france is paris ."
QUESTIONS = [
    {"question": "where do penguins live?", "context": CONTEXT},
    {"question": "what is the capital of france?", "context": CONTEXT},
]


async def _alone(client, path: str, body: dict, model: str) -> dict:
    r = await client.post(path, json={**body, "model": model})
    assert r.status_code == 200, r.text
    return r.json()


def _cos(a: list[float], b: list[float]) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


async def test_classification_outputs_equal_the_endpoint_and_labels_are_compared(client) -> None:
    r = await client.post("/compare", json={"task": "classification", "inputs": TEXTS, "top_k": None})
    assert r.status_code == 200, r.text
    body = r.json()
    for role in ("teacher", "student"):
        alone = await _alone(client, "/classify", {"inputs": TEXTS, "top_k": None}, role)
        side = body[role]
        assert (side["model"], side["role"], side["backend"]) == (alone["model"], role, "onnx")
        assert side["items"] == alone["items"]
        assert side["usage"] == alone["usage"]
        for got, want in zip(side["results"], alone["results"], strict=False):
            assert [d["label"] for d in got] == [d["label"] for d in want]
            assert [d["score"] for d in got] == pytest.approx([d["score"] for d in want], abs=1e-6)
    teacher, student = body["teacher"]["results"], body["student"]["results"]
    same = [t[0]["label"] == s[0]["label"] for t, s in zip(teacher, student, strict=False)]
    assert body["agreement"] == [{"same_label": x} for x in same]
    assert body["summary"] == {"same_label": pytest.approx(sum(same) / len(same))}


async def test_latencies_and_their_ratio(client) -> None:
    body = (await client.post("/compare", json={"task": "classification", "inputs": "good"})).json()
    t_ms, s_ms = body["teacher"]["latency_ms"], body["student"]["latency_ms"]
    assert 0 < t_ms < 10_000
    assert 0 < s_ms < 10_000
    assert body["latency_ratio"] == pytest.approx(s_ms / t_ms)
    assert body["speedup"] == pytest.approx(t_ms / s_ms)


async def test_qa_span_f1_is_squad_f1_of_the_student_against_the_teacher(client) -> None:
    request = {"inputs": QUESTIONS, "top_k": 2, "doc_stride": 16}
    body = (await client.post("/compare", json={"task": "qa", **request})).json()
    teacher = await _alone(client, "/qa", request, "squad-teacher")
    student = await _alone(client, "/qa", request, "squad-student")
    for side, alone in ((body["teacher"], teacher), (body["student"], student)):
        assert side["items"] == alone["items"]
        assert [[(a["answer"], a["start"], a["end"]) for a in res] for res in side["results"]] == \
            [[(a["answer"], a["start"], a["end"]) for a in res] for res in alone["results"]]
    for got, t, s in zip(body["agreement"], teacher["results"], student["results"], strict=False):
        t_ans, s_ans = t[0]["answer"], s[0]["answer"]
        assert got["span_f1"] == pytest.approx(squad_f1(s_ans, t_ans))
        assert got["exact_match"] is bool(exact_match(s_ans, t_ans))


async def test_embedding_cosine_of_the_endpoint_vectors(client) -> None:
    texts = ["a man is playing a guitar", "the dog and the cat", "paris"]
    body = (await client.post("/compare", json={"task": "embedding", "inputs": texts, "normalize": False})).json()
    teacher = await _alone(client, "/embed", {"inputs": texts, "normalize": False}, "teacher")
    student = await _alone(client, "/embed", {"inputs": texts, "normalize": False}, "student")
    np.testing.assert_allclose(body["teacher"]["results"], teacher["embeddings"], atol=1e-5)
    np.testing.assert_allclose(body["student"]["results"], student["embeddings"], atol=1e-5)
    expected = [_cos(t, s) for t, s in zip(teacher["embeddings"], student["embeddings"], strict=False)]
    assert [a["cosine"] for a in body["agreement"]] == pytest.approx(expected, abs=1e-5)
    assert body["summary"]["cosine"] == pytest.approx(float(np.mean(expected)), abs=1e-5)


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ({"task": "classification", "inputs": TEXTS}, {"same_label": 1.0}),
        ({"task": "qa", "inputs": QUESTIONS}, {"span_f1": 1.0, "exact_match": 1.0}),
        ({"task": "embedding", "inputs": TEXTS}, {"cosine": pytest.approx(1.0, abs=1e-6)}),
    ],
)
async def test_a_model_against_itself_agrees_fully(client, request_body: dict, expected: dict) -> None:
    r = await client.post("/compare", json={**request_body, "student": "teacher"})
    assert r.status_code == 200, r.text
    assert r.json()["summary"] == expected


async def test_backend_aliases_pick_the_backend(client) -> None:
    request = {"inputs": ["the actor was great"], "top_k": None}
    payload = {"task": "classification", "teacher": "teacher@torch", **request}
    body = (await client.post("/compare", json=payload)).json()
    alone = await _alone(client, "/classify", request, "teacher@torch")
    assert (body["teacher"]["model"], body["teacher"]["backend"]) == ("sst2-teacher@torch", "torch")
    assert [d["score"] for d in body["teacher"]["results"][0]] == \
        pytest.approx([d["score"] for d in alone["results"][0]], abs=1e-6)


@pytest.mark.parametrize(
    ("request_body", "status", "type_", "param"),
    [
        ({"task": "classification", "inputs": "x", "teacher": "nope"}, 404, "model_not_found", "teacher"),
        ({"task": "qa", "question": "q?", "context": "c", "student": "sst2-student"}, 400, "wrong_task", "student"),
        ({"task": "classification", "inputs": "x", "model": "teacher"}, 422, "invalid_input", "model"),
        ({"task": "translation", "inputs": "x"}, 422, "invalid_input", "task"),
    ],
)
async def test_model_errors_name_the_field(client, request_body: dict, status: int, type_: str, param: str) -> None:
    r = await client.post("/compare", json=request_body)
    assert r.status_code == status, r.text
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": type_, "param": param}}


@pytest.mark.parametrize(
    ("task", "path", "request_body", "status"),
    [
        ("classification", "/classify", {"inputs": []}, 422),
        ("classification", "/classify", {"inputs": [["a", "b", "c"]]}, 422),
        ("qa", "/qa", {"question": "q?"}, 422),
        ("qa", "/qa", {"question": "q?", "context": "c", "top_k": 1000}, 422),
        ("embedding", "/embed", {"inputs": ["a"] * 65}, 413),
        ("classification", "/classify", {"inputs": " ".join(["good"] * 100), "truncate": False}, 413),
    ],
)
async def test_input_errors_equal_the_task_endpoints(
    client, task: str, path: str, request_body: dict, status: int
) -> None:
    """The same body is checked by the same code: /compare answers exactly what the endpoint does."""
    compared = await client.post("/compare", json={"task": task, **request_body})
    alone = await client.post(path, json=request_body)
    assert (compared.status_code, compared.json()) == (status, alone.json())
    assert set(compared.json()["error"]) == {"message", "type", "param"}
