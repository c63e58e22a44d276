"""HTTP floor: CPU per request of the serving stack with no model, on 127.0.0.1, so that the
service's own HTTP cost can be read against what the framework alone costs on this machine.

  python -m benchmarks.http_floor

Two servers answer the same /embed request (one sentence) with a 384-float vector, each under
`uvicorn` (uvloop, httptools, no access log) and 32 keep-alive clients for `--seconds`:
- raw: a bare ASGI callable (what uvicorn and the socket cost);
- fastapi: one FastAPI route with a pydantic body, as a minimal app would write it.
It prints the server's CPU ms per request (from /proc) and req/s. Together with
`bench_serving`'s "CPU per item" line this bounds ratio (a): in-process CPU per item /
(in-process CPU per item + the fastapi floor + the load client) is the most any FastAPI service
could reach with every core busy.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel

from benchmarks.harness import SENTENCES, UvicornServer, body, cpu_seconds, request_bytes, rotations, run_load

_VECTOR = [0.01 * i for i in range(384)]
_REPLY = {"model": "m", "embeddings": [_VECTOR], "dim": 384, "items": [{"tokens": 12, "truncated": False}],
          "usage": {"tokens": 12}}


class EmbedBody(BaseModel):
    inputs: str | list[str]
    model: str | None = None
    normalize: bool | None = None
    truncate: bool = True


fastapi_app = FastAPI()


@fastapi_app.post("/embed")
async def embed(payload: EmbedBody) -> Response:
    return Response(orjson.dumps(_REPLY), media_type="application/json")


@fastapi_app.get("/ready")
async def ready() -> dict[str, str]:
    return {"status": "ok"}


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers the same bytes as the FastAPI route."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    data = orjson.dumps(_REPLY)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def measure(target: str, port: int, seconds: float) -> tuple[float, float]:
    """(server CPU ms per request, req/s) for one app under 32 clients."""
    with UvicornServer(target, port, ready_timeout_s=30) as server:
        reqs = [request_bytes("/embed", body("embedding", s, "m")) for s in SENTENCES]
        run_load(port, [reqs] * 4, 1.0)
        cpu0 = cpu_seconds(server.pid)
        rps, latencies = run_load(port, rotations(reqs, 32), seconds)
        return (cpu_seconds(server.pid) - cpu0) / len(latencies) * 1e3, rps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=18400)
    args = parser.parse_args(argv)
    for name, target in (("raw", "benchmarks.http_floor:raw_app"), ("fastapi", "benchmarks.http_floor:fastapi_app")):
        runs = [measure(target, args.port, args.seconds) for _ in range(args.rounds)]
        cpu = sorted(r[0] for r in runs)[len(runs) // 2]
        rps = sorted(r[1] for r in runs)[len(runs) // 2]
        print(f"{name}: server CPU {cpu:.3f} ms per request, {rps:.0f} req/s (medians of {args.rounds})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
