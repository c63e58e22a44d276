"""API keys, request ids and what the logs may contain, on a real server with two keys set."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.polling import wait_for
from tests.reliability.server import Server, running
from tests.reliability.test_bad_input import assert_clean_error

KEYS = ("k-first-0123456789", "k-second-abcdefghij")
SECRET_TEXT = "the penguins of antarctica love a quick brown fox"


@pytest.fixture(scope="module")
def keyed(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"DISTILSERVE_API_KEYS": f'["{KEYS[0]}", "{KEYS[1]}"]', "DISTILSERVE_BACKENDS": '["onnx"]'}
    with running(model_repo, tmp_path_factory.mktemp("keyed") / "server.log", env) as server:
        yield server


def test_health_ready_metrics_are_public(keyed: Server) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(keyed.url + path).status_code == 200, path


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer"}])
def test_missing_key_is_401(keyed: Server, headers: dict) -> None:
    r = httpx.post(keyed.url + "/classify", json={"inputs": "good"}, headers=headers)
    err = assert_clean_error(r, 401, "unauthorized", "authorization")
    assert "missing API key" in err["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {KEYS[0]}x"}, {"X-API-Key": KEYS[1][:-1]}, {"X-API-Key": "k"},
    {"Authorization": f"Bearer {KEYS[0].upper()}"},
])
def test_wrong_key_is_401_on_every_route(keyed: Server, headers: dict) -> None:
    denied = ("unauthorized", "authorization")
    assert_clean_error(httpx.post(keyed.url + "/embed", json={"inputs": "a"}, headers=headers), 401, *denied)
    assert_clean_error(httpx.get(keyed.url + "/models", headers=headers), 401, *denied)
    assert_clean_error(httpx.get(keyed.url + "/openapi.json", headers=headers), 401, *denied)


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {KEYS[0]}"}, {"authorization": f"bearer {KEYS[1]}"}, {"X-API-Key": KEYS[1]},
])
def test_each_key_in_either_header_is_accepted(keyed: Server, headers: dict) -> None:
    r = httpx.post(keyed.url + "/classify", json={"inputs": "good"}, headers=headers)
    assert r.status_code == 200
    assert r.json()["results"][0][0]["label"] in ("positive", "negative")


def test_request_id_is_accepted_created_and_returned(keyed: Server) -> None:
    auth = {"X-API-Key": KEYS[0]}
    headers = {**auth, "X-Request-ID": "client-id.42"}
    given = httpx.post(keyed.url + "/classify", json={"inputs": "good"}, headers=headers)
    assert given.headers["x-request-id"] == "client-id.42"
    made = httpx.post(keyed.url + "/classify", json={"inputs": "good"}, headers=auth)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    for bad in ("has spaces in it", "x" * 200, "quote\"and{json}"):
        r = httpx.get(keyed.url + "/health", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad  # replaced, never echoed
    denied = httpx.get(keyed.url + "/models", headers={"X-Request-ID": "denied-1"})
    assert_clean_error(denied, 401, "unauthorized", "authorization")


def test_logs_are_json_with_request_ids_and_no_input_text_or_keys(keyed: Server) -> None:
    auth = {"Authorization": f"Bearer {KEYS[1]}"}
    headers = {**auth, "X-Request-ID": "trace-me-7"}
    r = httpx.post(keyed.url + "/classify", json={"inputs": SECRET_TEXT}, headers=headers)
    assert r.status_code == 200
    httpx.post(keyed.url + "/classify", json={"inputs": SECRET_TEXT}, headers={"X-Request-ID": "trace-me-8"})
    lines = _wait_for_log(keyed, "trace-me-8")
    ok, denied = (next(e for e in lines if e.get("request_id") == rid) for rid in ("trace-me-7", "trace-me-8"))
    assert (ok["path"], ok["status"], ok["model"], ok["method"]) == ("/classify", 200, "sst2-student", "POST")
    assert denied["status"] == 401
    assert ok["duration_ms"] > 0
    text = keyed.logs()
    assert SECRET_TEXT not in text
    assert "penguins" not in text
    assert KEYS[0] not in text
    assert KEYS[1] not in text


def _wait_for_log(server: Server, request_id: str) -> list[dict]:
    """The access line is written when the response ends: poll the file for it."""

    def lines() -> list[dict] | None:
        entries = server.json_logs()
        return entries if any(e.get("request_id") == request_id for e in entries) else None

    return wait_for(lines, what=lambda: f"a log line for {request_id} in:\n{server.logs()[-2000:]}")
