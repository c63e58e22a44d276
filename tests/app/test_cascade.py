"""The confidence cascade through HTTP: the student answers, items under the threshold go to
the teacher in the same request, a refused escalation keeps the student's answer, and the
metrics and /models say what happened."""

from __future__ import annotations

import pytest

from app.http.errors import ServiceError
from app.settings import Settings
from inference.cascade import confidence
from tests.conftest import serve, serve_app
from tests.scrape import delta, parse

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEXTS = ["a gripping film", "dull and far too long", "it was fine", "the best film of the year", "meh"]


def _settings(model_repo, **thresholds: float) -> Settings:
    return Settings(models_dir=model_repo, backends=["onnx"], threads=1, cascade_thresholds=thresholds)


def _same(got: list[dict], expected: list[dict]) -> bool:
    """The same labels (or answers) in order, with scores equal up to batch padding's rounding."""
    keys = [{k: v for k, v in e.items() if k != "score"} for e in expected]
    return [{k: v for k, v in g.items() if k != "score"} for g in got] == keys and all(
        g["score"] == pytest.approx(e["score"], abs=1e-5) for g, e in zip(got, expected, strict=True))


async def _classify(client, model: str, top_k: int | None = 1) -> dict:
    response = await client.post("/classify", json={"inputs": TEXTS, "model": model, "top_k": top_k})
    assert response.status_code == 200, response.text
    return response.json()


async def test_items_under_the_threshold_are_answered_by_the_teacher(model_repo) -> None:
    async with serve(_settings(model_repo, sst2=0.0)) as probe:  # the student's confidences, unescalated
        student = await _classify(probe, "student", top_k=None)
    confidences = [confidence("top_probability", r) for r in student["results"]]
    threshold = sorted(confidences)[2]  # the two least confident items escalate
    async with serve(_settings(model_repo, sst2=threshold)) as client:
        before = parse((await client.get("/metrics")).text)
        cascade = await _classify(client, "cascade")
        teacher = await _classify(client, "teacher")
        after = parse((await client.get("/metrics")).text)
    who = [item["answered_by"] for item in cascade["items"]]
    assert who == ["teacher" if c < threshold else "student" for c in confidences]
    assert who.count("teacher") == 2
    for i, answered_by in enumerate(who):
        expected = teacher["results"][i] if answered_by == "teacher" else student["results"][i][:1]
        assert _same(cascade["results"][i], expected)
    assert cascade["model"] == "sst2:cascade"
    escalated_tokens = sum(teacher["items"][i]["tokens"] for i, w in enumerate(who) if w == "teacher")
    assert cascade["usage"]["tokens"] == student["usage"]["tokens"] + escalated_tokens
    assert delta(before, after, "distilserve_cascade_items_total", pair="sst2", answered_by="teacher") == 2
    assert delta(before, after, "distilserve_cascade_items_total", pair="sst2", answered_by="student") == 3
    assert delta(before, after, "distilserve_requests_total", role="cascade", model="sst2:cascade") == 1


async def test_a_refused_escalation_returns_the_students_answer_with_the_reason(model_repo) -> None:
    async with serve_app(_settings(model_repo, sst2=2.0)) as (app, client):  # every item escalates
        teacher = app.state.registry.models["sst2-teacher"]

        async def refuse(payloads):
            raise ServiceError("queue_full", "queue full (1024 of 1024 items waiting); retry later")

        teacher.batcher.run = refuse
        cascade = await _classify(client, "cascade")
        student = await _classify(client, "student")
    assert all(_same(c, s) for c, s in zip(cascade["results"], student["results"], strict=True))
    assert {item["escalation"] for item in cascade["items"]} == {"refused"}
    assert {item["answered_by"] for item in cascade["items"]} == {"student"}
    assert "queue full" in cascade["items"][0]["reason"]


async def test_qa_cascade_and_models_listing_and_compare(model_repo) -> None:
    question = {"question": "what city?", "context": "the meeting is in paris next week"}
    async with serve(_settings(model_repo, squad=2.0, sst2=0.5)) as client:
        answered = (await client.post("/qa", json={"inputs": [question], "model": "squad:cascade"})).json()
        teacher = (await client.post("/qa", json={"inputs": [question], "model": "teacher"})).json()
        listed = {c["name"]: c for c in (await client.get("/models")).json()["cascades"]}
        compared = (await client.post("/compare", json={"task": "classification", "inputs": TEXTS,
                                                        "student": "cascade"})).json()
    assert answered["items"][0]["answered_by"] == "teacher"
    assert _same(answered["results"][0], teacher["results"][0])
    assert listed["squad:cascade"]["confidence"] == "span_score"
    assert listed["sst2:cascade"]["threshold"] == 0.5
    assert listed["sst2:cascade"]["threshold_source"] == "setting"
    assert "embed:cascade" not in listed  # embeddings have no cascade
    assert compared["student"]["role"] == "cascade"
    assert compared["student"]["model"] == "sst2:cascade"


async def test_an_uncalibrated_cascade_says_how_to_calibrate(model_repo) -> None:
    async with serve(_settings(model_repo)) as client:
        response = await client.post("/classify", json={"inputs": ["x"], "model": "cascade"})
        assert (await client.get("/models")).json()["cascades"] == []
    assert response.status_code == 404
    assert "python -m training calibrate sst2" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "model"
