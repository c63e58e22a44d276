"""Overload benchmark: 10x capacity for a bounded time, on 127.0.0.1 only; stops by itself.

  python -m benchmarks.overload --model-dir /tmp/bench/minilm --seconds 10

1. capacity: closed loop (`--clients` keep-alive clients back to back), requests/s served;
2. uncongested: open loop at half that rate; p50/p99 latency (every request should be a 200);
3. overload: open loop at `--factor` x capacity for `--seconds`. Reported: how many requests
   were sent and how many got a response (by status; a request with no response within
   `--timeout` counts as lost), admitted (200) p99 against the uncongested p99 (target <= 2x),
   429 latency and whether every 429 carried Retry-After, the server's RSS at the start of
   the phase, its peak and its end (target: peak within 10% of start).

Arrivals are scheduled at fixed intervals and latency is measured from the scheduled time, so
a client that falls behind shows up as latency rather than as silently lower load; the lag is
printed too. The client is raw asyncio HTTP/1.1 (one connection per request in flight, up to
`--max-connections`), cheap enough to share the machine with the server.

The server runs with the service's default settings except the admission budget, which is
the latency-protecting automatic one (`DISTILSERVE_MAX_QUEUE_WAIT_MS=0`): admission by estimated
wait (the queue ahead at the measured service rate) keeps admitted latency near the uncongested
one while the item cap stays at 1024. The service's default budget (2 s) favours clients that
send back to back; pass `--max-queue-wait-ms 2000` to see what it does under overload.
`--queue-depth`, `--max-batch-size` and `--max-queue-wait-ms` override a setting to show the
trade-off (a wider budget buys throughput on a busy server at admitted latency's expense).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, too

from benchmarks.harness import (
    ENDPOINT,
    SENTENCES,
    Server,
    body,
    content_length,
    request_bytes,
    rss_mib,
    served_models,
)
from inference.backends import KINDS


@dataclass(slots=True)
class Outcome:
    scheduled: float
    sent: float = 0.0
    done: float = 0.0
    status: int = 0  # 0: no response
    retry_after: bool = False
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.scheduled


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
STALE_S = 2.0  # uvicorn closes keep-alive connections idle for 5 s: never reuse one near that


class Pool:
    """Keep-alive connections to the server; a request takes an idle one or opens a new one,
    up to `limit` (then it waits for one to come back). Connections idle for `STALE_S` are
    closed rather than reused, so a request never lands on one the server is closing."""

    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit, self.open = port, limit, 0
        self.idle: list[tuple[Conn, float]] = []
        self.freed = asyncio.Condition()

    async def acquire(self) -> Conn:
        async with self.freed:
            self._drop_stale()
            while not self.idle and self.open >= self.limit:
                await self.freed.wait()
                self._drop_stale()
            if self.idle:
                return self.idle.pop()[0]
            self.open += 1
        return await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)

    def _drop_stale(self) -> None:
        now = time.perf_counter()
        while self.idle and now - self.idle[0][1] > STALE_S:  # the oldest are at the bottom
            self.idle.pop(0)[0][1].close()
            self.open -= 1

    async def release(self, conn: Conn, reuse: bool) -> None:
        async with self.freed:
            if reuse:
                self.idle.append((conn, time.perf_counter()))
            else:
                conn[1].close()
                self.open -= 1
            self.freed.notify()

    def close(self) -> None:
        for (_, writer), _ in self.idle:
            writer.close()


async def exchange(pool: Pool, raw: bytes, out: Outcome) -> None:
    """One request on a pooled connection; fills `out` (status, Retry-After, times)."""
    conn = await pool.acquire()
    reuse = False
    try:
        out.sent = time.perf_counter()
        conn[1].write(raw)
        head = (await conn[0].readuntil(b"\r\n\r\n")).lower()
        await conn[0].readexactly(content_length(head))
        out.status, out.retry_after = int(head[9:12]), b"\r\nretry-after:" in head
        reuse = b"connection: close" not in head
    finally:
        out.done = time.perf_counter()
        await pool.release(conn, reuse)


async def one(pool: Pool, raw: bytes, out: Outcome, timeout: float) -> None:
    try:
        await asyncio.wait_for(exchange(pool, raw, out), timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        out.error, out.done = type(exc).__name__, time.perf_counter()


async def open_loop(port: int, reqs: list[bytes], rate: float, seconds: float,
                    args: argparse.Namespace) -> list[Outcome]:
    """Requests at fixed intervals (1/rate) for `seconds`, whatever the answers take."""
    pool, count = Pool(port, args.max_connections), int(rate * seconds)
    start = time.perf_counter() + 0.05
    outcomes = [Outcome(start + i / rate) for i in range(count)]
    tasks = []
    for i, out in enumerate(outcomes):
        if (delay := out.scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(pool, reqs[i % len(reqs)], out, args.timeout)))
    await asyncio.gather(*tasks)
    pool.close()
    return outcomes


async def closed_loop(port: int, reqs: list[bytes], clients: int, seconds: float) -> float:
    """Answered requests/s with `clients` sending back to back. A client turned away (429:
    more clients than the queue admits) retries after 2 ms, so the server always has the
    next request at hand and the figure is its service rate, not the clients' round trips."""
    pool, until, done = Pool(port, clients), time.perf_counter() + seconds, [0]

    async def client(k: int) -> None:
        while time.perf_counter() < until:
            out = Outcome(time.perf_counter())
            await one(pool, reqs[(k + done[0]) % len(reqs)], out, 30)
            if out.status == 429:
                await asyncio.sleep(0.002)
                continue
            if out.status != 200:
                raise RuntimeError(f"capacity run got {out.status or out.error}")
            done[0] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    pool.close()
    return done[0] / (time.perf_counter() - start)


async def sample_rss(pid: int, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_mib(pid))
        await asyncio.sleep(0.25)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000 if ordered else float("nan")


def served_model(url: str) -> tuple[str, str]:
    first = served_models(url)[0]
    return first["name"], first["task"]


async def phases(server: Server, reqs: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    port = server.port
    await closed_loop(port, reqs, args.clients, 2.0)  # warm-up: arenas, connections, caches
    capacity = await closed_loop(port, reqs, args.clients, args.capacity_seconds)
    calm = await open_loop(port, reqs, capacity / 2, args.capacity_seconds, args)
    samples: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server.pid, samples, stop))
    rss_start = rss_mib(server.pid)
    storm = await open_loop(port, reqs, capacity * args.factor, args.seconds, args)
    await asyncio.sleep(0.5)  # let the queue drain before the last memory sample
    stop.set()
    await sampler
    return {"capacity": capacity, "calm": calm, "storm": storm, "rss": (rss_start, max(samples), rss_mib(server.pid))}


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The measured numbers of one run, from the raw outcomes."""
    calm, storm = result["calm"], result["storm"]
    calm_ok = [o.latency for o in calm if o.status == 200]
    admitted = [o.latency for o in storm if o.status == 200]
    shed = [o for o in storm if o.status == 429]
    statuses: dict[str, int] = {}
    for o in storm:
        key = str(o.status) if o.status else f"no response ({o.error})"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "calm_n": len(calm), "calm_ok": calm_ok, "admitted": admitted, "statuses": statuses,
        "admitted_from_send": [o.done - o.sent for o in storm if o.status == 200],
        "sent": len(storm), "answered": sum(1 for o in storm if o.status),
        "shed_s": [o.done - o.sent for o in shed], "shed_retry_after": sum(o.retry_after for o in shed),
        "lag_ms": max(o.sent - o.scheduled for o in storm if o.sent) * 1000,
        "ratio": pct(admitted, 99) / pct(calm_ok, 99), "rss": result["rss"],
    }


def report(result: dict[str, Any], args: argparse.Namespace) -> bool:
    """Print the figures and ratios; True when every target holds."""
    f, capacity = figures(result), result["capacity"]
    rss_start, rss_peak, rss_end = f["rss"]
    print(f"capacity (closed loop, {args.clients} clients, {args.capacity_seconds:.0f} s): {capacity:.1f} req/s")
    print(f"uncongested (open loop {capacity / 2:.1f} req/s): {len(f['calm_ok'])}/{f['calm_n']} ok, "
          f"p50 {pct(f['calm_ok'], 50):.1f} ms, p99 {pct(f['calm_ok'], 99):.1f} ms")
    print(f"overload (open loop {capacity * args.factor:.1f} req/s = {args.factor:g}x, {args.seconds:.0f} s): "
          f"sent {f['sent']}, answered {f['answered']}; by status {json.dumps(f['statuses'])}")
    print(f"  admitted: {len(f['admitted']) / args.seconds:.1f} req/s, p50 {pct(f['admitted'], 50):.1f} ms, "
          f"p99 {pct(f['admitted'], 99):.1f} ms = {f['ratio']:.2f}x uncongested p99 (target <= 2)")
    print(f"  admitted, timed from the actual send (without client lag): "
          f"p50 {pct(f['admitted_from_send'], 50):.1f} ms, "
          f"p99 {pct(f['admitted_from_send'], 99):.1f} ms")
    print(f"  429: p50 {pct(f['shed_s'], 50):.1f} ms, p99 {pct(f['shed_s'], 99):.1f} ms after sending; "
          f"Retry-After on {f['shed_retry_after']}/{len(f['shed_s'])}")
    print(f"  server RSS: start {rss_start:.1f} MiB, peak {rss_peak:.1f} MiB, end {rss_end:.1f} MiB; "
          f"peak/start {rss_peak / rss_start:.3f} (target <= 1.10)")
    print(f"  client lag (send after schedule): max {f['lag_ms']:.1f} ms")
    checks = {
        "every request answered": f["answered"] == f["sent"],
        "429s carry Retry-After": bool(f["shed_s"]) and f["shed_retry_after"] == len(f["shed_s"]),
        "admitted p99 <= 2x uncongested p99": f["ratio"] <= 2.0,
        "RSS within 10%": rss_peak / rss_start <= 1.10,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="one model folder (manifest or plain HF) to serve")
    parser.add_argument("--backend", default="onnx", choices=KINDS)
    parser.add_argument("--port", type=int, default=18241)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the overload phase")
    parser.add_argument("--capacity-seconds", type=float, default=8.0,
                        help="duration of the capacity and uncongested runs")
    parser.add_argument("--factor", type=float, default=10.0, help="overload rate as a multiple of capacity")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients for the capacity run")
    parser.add_argument("--queue-depth", type=int,
                        help="override DISTILSERVE_QUEUE_DEPTH (items; default: the service's)")
    parser.add_argument("--max-batch-size", type=int, help="override DISTILSERVE_MAX_BATCH_SIZE")
    parser.add_argument("--max-queue-wait-ms", type=float, default=0.0,
                        help="DISTILSERVE_MAX_QUEUE_WAIT_MS "
                             "(admission budget; default 0: automatic, latency-protecting)")
    parser.add_argument("--max-connections", type=int, default=512, help="client connections at most")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as lost")
    args = parser.parse_args(argv)
    overrides = {"QUEUE_DEPTH": args.queue_depth, "MAX_BATCH_SIZE": args.max_batch_size,
                 "MAX_QUEUE_WAIT_MS": args.max_queue_wait_ms}
    env = {f"DISTILSERVE_{k}": str(v) for k, v in overrides.items() if v is not None}
    with Server(args.model_dir, args.backend, args.port, env) as server:
        name, task = served_model(server.url)
        reqs = [request_bytes(ENDPOINT[task], body(task, text, name)) for text in SENTENCES]
        print(f"model {name} ({task}, {args.backend}); settings: {env or 'service defaults'}")
        ok = report(asyncio.run(phases(server, reqs, args)), args)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
