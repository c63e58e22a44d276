"""The bad-input catalogue through real HTTP: each case gets its exact status, error type and
named field, no error carries a stack trace or a server path, and the very next good request
is answered normally (the service is not left in a bad state by any of them)."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from tests.reliability.server import Server

JSON = {"content-type": "application/json"}
GOOD = ("/classify", {"inputs": "a good film"})
QA = {"question": "where do penguins live?", "context": "penguins live in antarctica"}

# (name, path, body (dict: JSON; bytes: raw), status, error type, field named in `param`)
CATALOGUE = [
    ("empty string", "/classify", {"inputs": ""}, 422, "invalid_input", "inputs"),
    ("empty list", "/classify", {"inputs": []}, 422, "invalid_input", "inputs"),
    ("empty string in a list", "/embed", {"inputs": ["ok", ""]}, 422, "invalid_input", "inputs.1"),
    ("whitespace only", "/classify", {"inputs": " \t\n "}, 422, "invalid_input", "inputs"),
    ("whitespace item", "/classify", {"inputs": ["ok", "   "]}, 422, "invalid_input", "inputs.1"),
    ("whitespace, openai shape", "/v1/embeddings", {"input": "  "}, 422, "invalid_input", "input"),
    ("100,000-character text", "/classify", {"inputs": "good " * 20_000}, 413, "payload_too_large", "inputs.0"),
    ("10,000-item batch", "/embed", {"inputs": ["a"] * 10_000}, 413, "payload_too_large", "inputs"),
    ("nested lists", "/classify", {"inputs": [[["a"]]]}, 422, "invalid_input", "inputs.0.0"),
    ("nested list in a pair", "/classify", {"inputs": ["a", ["b", ["c"]]]}, 422, "invalid_input", "inputs.1.1"),
    ("nested list for embedding", "/embed", {"inputs": [["a"]]}, 422, "invalid_input", "inputs.0"),
    ("number for text", "/classify", {"inputs": 5}, 422, "invalid_input", "inputs"),
    ("number in a list", "/embed", {"inputs": ["a", 1.5]}, 422, "invalid_input", "inputs.1"),
    ("null for text", "/classify", {"inputs": None}, 422, "invalid_input", "inputs"),
    ("null in a list", "/classify", {"inputs": ["a", None]}, 422, "invalid_input", "inputs.1"),
    ("null question", "/qa", {"question": None, "context": "c"}, 422, "invalid_input", "question"),
    ("invalid UTF-8", "/classify", b'{"inputs": "caf\xc3\x28 \xff\xfe"}', 400, "invalid_request", "body"),
    ("not JSON", "/classify", b"inputs=hello", 422, "invalid_input", "body"),
    ("truncated JSON", "/qa", b'{"question": "q", "context": "c"', 422, "invalid_input", "body"),
    ("unknown model", "/classify", {"inputs": "a", "model": "gpt-17"}, 404, "model_not_found", "model"),
    ("unknown alias backend", "/embed", {"inputs": "a", "model": "student@tpu"}, 404, "model_not_found", "model"),
    ("QA without question", "/qa", {"context": "c"}, 422, "invalid_input", "question"),
    ("QA without context", "/qa", {"question": "q"}, 422, "invalid_input", "context"),
    ("QA with empty context", "/qa", {"question": "q", "context": ""}, 422, "invalid_input", "context"),
    ("QA with blank context", "/qa", {"question": "q", "context": "  "}, 422, "invalid_input", "context"),
    ("QA batch item without context", "/qa", {"inputs": [{"question": "q"}]}, 422, "invalid_input", "inputs.0.context"),
    ("top_k 0", "/classify", {"inputs": "a", "top_k": 0}, 422, "invalid_input", "top_k"),
    ("top_k -1", "/classify", {"inputs": "a", "top_k": -1}, 422, "invalid_input", "top_k"),
    ("QA top_k 0", "/qa", {**QA, "top_k": 0}, 422, "invalid_input", "top_k"),
    ("QA top_k -1", "/qa", {**QA, "top_k": -1}, 422, "invalid_input", "top_k"),
    ("classification model sent to /qa", "/qa", {**QA, "model": "sst2-student"}, 400, "wrong_task", "model"),
    ("classification model on torch sent to /qa", "/qa", {**QA, "model": "sst2-teacher@torch"}, 400, "wrong_task",
     "model"),
    ("unknown field", "/embed", {"inputs": "a", "normalise": True}, 422, "invalid_input", "normalise"),
]


def assert_clean_error(r: httpx.Response, status: int, type_: str, param: str | None) -> dict:
    """The shared error shape, the exact status/type/field, and nothing internal in it."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param"}, body
    assert (body["error"]["type"], body["error"]["param"]) == (type_, param), body
    for leak in ("Traceback", 'File "', ".py", "/tmp/", "/work/", "site-packages"):
        assert leak not in r.text, r.text
    return body["error"]


def post(client: httpx.Client, path: str, body: dict | bytes, **kwargs: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers=JSON, **kwargs)
    return client.post(path, json=body, **kwargs)


@pytest.fixture(scope="module")
def http(server: Server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def good_answer(http: httpx.Client) -> dict:
    r = http.post(GOOD[0], json=GOOD[1])
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(("name", "path", "body", "status", "type_", "param"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_then_a_good_request(http, good_answer, name, path, body, status, type_, param) -> None:
    assert_clean_error(post(http, path, body), status, type_, param)
    after = http.post(GOOD[0], json=GOOD[1])
    assert after.status_code == 200
    assert after.json() == good_answer


def test_huge_body_is_413_from_content_length_before_it_is_read(http, good_answer) -> None:
    """5 MB against the 4 MB default: refused from the header alone (the server answers
    without reading the body, so the answer comes faster than the upload would take)."""
    body = b'{"inputs": "' + b"a" * 5_000_000 + b'"}'
    err = assert_clean_error(post(http, "/classify", body), 413, "payload_too_large", "body")
    assert "4000000 bytes" in err["message"]
    assert http.post(GOOD[0], json=GOOD[1]).json() == good_answer


def test_huge_chunked_body_is_413_while_streaming(server: Server, http, good_answer) -> None:
    """No Content-Length (chunked upload): the limit is enforced as chunks arrive. The client
    sends 4.5 MB and never finishes the body, yet the 413 comes back: the server answered
    mid-stream instead of waiting to read (and parse) the body whole."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(b'{"inputs": "'))
        for _ in range(45):
            sock.sendall(_chunk(b"a" * 100_000))
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"param":"body"' in answer
    assert b"payload_too_large" in answer
    assert http.post(GOOD[0], json=GOOD[1]).json() == good_answer


def _read_response(sock: socket.socket) -> bytes:
    """Head and body of one HTTP response (the body by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_unknown_path_and_method_keep_the_shape(http) -> None:
    assert_clean_error(http.get("/nope"), 404, "not_found", None)
    assert_clean_error(http.get("/classify"), 405, "method_not_allowed", None)
