"""POST /qa through the real HTTP stack."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONTEXT = "Most penguins live in the southern hemisphere, many of them in Antarctica. " * 2
LONG_CONTEXT = " ".join(f"the river {i} runs by the old city of paris in france" for i in range(12))


async def test_answers_are_spans_of_the_context(client) -> None:
    r = await client.post("/qa", json={"question": "where do penguins live?", "context": CONTEXT, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    answers = body["results"][0]
    assert body["model"] == "squad-student"
    assert len(answers) == 3
    for a in answers:
        assert CONTEXT[a["start"] : a["end"]] == a["answer"]
        assert a["answer"]
        assert 0 < a["score"] <= 1
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
    assert body["items"][0]["windows"] == 1
    assert not body["items"][0]["truncated"]


async def test_long_context_uses_overlapping_windows(client) -> None:
    payload = {"inputs": [{"question": "what city?", "context": LONG_CONTEXT}], "doc_stride": 16, "top_k": 5,
               "model": "teacher"}
    body = (await client.post("/qa", json=payload)).json()
    item = body["items"][0]
    assert item["windows"] > 3
    assert item["tokens"] == body["usage"]["tokens"]
    ends = {a["end"] for a in body["results"][0]}
    assert max(ends) > len(LONG_CONTEXT) // 3  # answers come from beyond the first window too
    for a in body["results"][0]:
        assert LONG_CONTEXT[a["start"] : a["end"]] == a["answer"]


async def test_impossible_answer_competes(client) -> None:
    payload = {"question": "who?", "context": "the dog", "handle_impossible_answer": True, "top_k": 20}
    answers = (await client.post("/qa", json=payload)).json()["results"][0]
    assert {"answer": "", "start": 0, "end": 0} in [{k: a[k] for k in ("answer", "start", "end")} for a in answers]


async def test_max_windows_reads_the_windows_that_share_most_with_the_question(client) -> None:
    sentences = [f"the river {i} runs by the old city of paris in france" for i in range(12)]
    sentences[9] = "penguins live in the southern hemisphere"
    context = " ".join(sentences)
    base = {"inputs": [{"question": "where do penguins live?", "context": context}], "doc_stride": 8, "top_k": 3}
    every = (await client.post("/qa", json=base)).json()["items"][0]
    r = await client.post("/qa", json={**base, "max_windows": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    item = body["items"][0]
    assert every["windows"] > 3
    assert "windows_skipped" not in every
    assert (item["windows"], item["windows_skipped"]) == (1, every["windows"] - 1)
    assert item["tokens"] < every["tokens"] / 2
    where = context.index("penguins")
    for a in body["results"][0]:  # every answer comes from the one window that holds "penguins"
        assert context[a["start"] : a["end"]] == a["answer"]
        assert abs(a["start"] - where) < 120, (a, where)


async def test_max_windows_below_one_is_a_422_naming_the_field(client) -> None:
    r = await client.post("/qa", json={"question": "q", "context": "c", "max_windows": 0})
    assert r.status_code == 422
    assert "max_windows" in r.text
