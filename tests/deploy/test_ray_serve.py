"""Scale-out on Ray Serve (deploy/ray/serve_app.py), on a local Ray instance: two replicas of
the whole service answer exactly what the single-process app answers; each replica's metrics
are a scrape target of their own; a replica killed with SIGKILL under load leaves every request
answered while Ray replaces it (at most one per client retried: the one the dead replica had
accepted); a rolling redeploy drains the old replicas without failing a single request, and
the app's own 429 + Retry-After reaches the client through Ray's proxy.

Replica processes are found through the Prometheus target files the replicas write (one
`<node>_<pid>.json` each): Ray's state API needs the dashboard, which is not started here."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[ray]')")

from app.settings import Settings  # noqa: E402 - after the skip
from deploy.ray import serve_app  # noqa: E402
from tests.polling import wait_for  # noqa: E402
from tests.reliability.server import Server, free_port, running  # noqa: E402
from tests.scrape import parse, value  # noqa: E402

REPLICAS = 2
PACE_S = 0.03
TEXTS = ["a good film", "the worst plot", "funny and very great", "boring dull movie", "the actor plays guitar"]
QA = [("where do penguins live?", "penguins live in antarctica, in the southern hemisphere"),
      ("what is the capital of france?", "paris is the capital of france and a big city")]


def requests() -> list[tuple[str, dict[str, Any]]]:
    """Mixed requests of every task, several items, pairs and options included."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i, text in enumerate(TEXTS):
        out.append(("/classify", {"inputs": [text, [text, TEXTS[i - 1]]], "top_k": None}))
        out.append(("/embed", {"inputs": [text, TEXTS[i - 2]]}))
        out.append(("/qa", {"question": QA[i % 2][0], "context": QA[i % 2][1], "top_k": 2}))
    out.append(("/classify", {"inputs": TEXTS[0], "model": "teacher"}))
    out.append(("/embed", {"inputs": TEXTS[1], "model": "teacher", "dimensions": 4}))
    return out


ENV = {  # the single-process app's environment; the replicas' Settings are read from the same
    "DISTILSERVE_BACKENDS": '["onnx"]', "DISTILSERVE_THREADS": "1", "DISTILSERVE_MODEL_WORKERS": "1",
    "DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000", "DISTILSERVE_WARMUP": "false",
}  # one thread, one worker per model, no warm-up timing: two replicas start fast on a small machine


@dataclass
class RayService:
    url: str
    targets_dir: Path
    settings: Settings
    export: serve_app.MetricsExport


@pytest.fixture(scope="module")
def ray_service(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayService]:
    """Ray on this machine, the service deployed with two replicas behind Serve's proxy."""
    targets = tmp_path_factory.mktemp("ray-targets")
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:  # start_ray's environment changes, undone after
        for name, setting in {**ENV, "DISTILSERVE_MODELS_DIR": str(model_repo)}.items():
            mp.setenv(name, setting)
        settings = Settings()
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        serve_app.start_ray(num_cpus=4)
        try:
            export = serve_app.MetricsExport("127.0.0.1", targets)
            app = serve_app.build(settings, serve_app.Scaling(REPLICAS), export, num_cpus=1)
            serve_app.serve_local(app, "127.0.0.1", port)  # returns once both replicas are up
            yield RayService(f"http://127.0.0.1:{port}", targets, settings, export)
        finally:
            serve_app.stop_local()


@pytest.fixture(scope="module")
def reference(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The single-process service (`uvicorn app.main:app`) on the same folder and settings."""
    with running(model_repo, tmp_path_factory.mktemp("reference") / "server.log", ENV) as server:
        yield server


def targets(folder: Path) -> dict[int, str]:
    """pid -> host:port of every replica's metrics server, from the file_sd files."""
    found = {}
    for path in folder.glob("*.json"):
        group = json.loads(path.read_text())[0]
        found[int(path.stem.rsplit("_", 1)[1])] = group["targets"][0]
    return found


def requests_total(target: str) -> float:
    return value(parse(httpx.get(f"http://{target}/metrics", timeout=5).text), "distilserve_requests_total")


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(serve_app.APP_NAME)
    states = app.deployments[serve_app.DEPLOYMENT_NAME].replica_states if app else {}
    return int(states.get("RUNNING", 0))


def same(got: Any, want: Any) -> bool:
    """Equal structures; floats equal to 1e-6 (the same ONNX file and thread count, but another
    process: the same kernels, so in practice they are identical)."""
    if isinstance(want, float):
        return isinstance(got, float) and got == pytest.approx(want, rel=1e-6, abs=1e-9)
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    return bool(got == want)


def test_replicas_answer_as_the_single_process_app(ray_service: RayService, reference: Server) -> None:
    before = {pid: requests_total(t) for pid, t in targets(ray_service.targets_dir).items()}
    assert len(before) == REPLICAS
    sent = 0
    with httpx.Client(base_url=ray_service.url, timeout=30) as client, \
            httpx.Client(base_url=reference.url, timeout=30) as single:
        for _ in range(3):  # each request more than once: answered by either replica
            for path, body in requests():
                got, want = client.post(path, json=body), single.post(path, json=body)
                assert got.status_code == want.status_code == 200, (path, body, got.text)
                assert same(got.json(), want.json()), (path, body, got.json(), want.json())
                sent += 1
    after = {pid: requests_total(t) for pid, t in targets(ray_service.targets_dir).items()}
    served = {pid: after[pid] - before[pid] for pid in before}
    assert sum(served.values()) == sent
    assert all(n > 0 for n in served.values()), f"a replica answered nothing: {served}"


@dataclass
class Outcome:
    """One request of the load: the first try's status (0: a transport error) and detail, and
    the status of the one retry made after a failed first try (None: no retry)."""

    first: int
    detail: str = ""
    retry: int | None = None

    @property
    def answered(self) -> bool:
        return 200 in (self.first, self.retry)


@dataclass
class Load:
    """Client threads sending mixed requests in a loop through Serve's proxy until stopped, each
    at most one request per `PACE_S`: the test is about availability, not throughput, and on a
    machine of one or two cores a closed loop flat out would starve the replacement replica's
    start (a new Python process loading the models) and slow the test for nothing. A failed
    request is retried once (these POSTs are idempotent), as a client behind a load balancer
    would: Ray re-routes a request the dead replica had not yet accepted, but one it had accepted
    dies with it, at most one per client (each has one request in flight)."""

    url: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int) -> None:
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, offset: int) -> None:
        reqs = requests()
        with httpx.Client(base_url=self.url, timeout=60) as client:
            i = offset
            while not self.stop.is_set():
                path, body = reqs[i % len(reqs)]
                first, detail = self._post(client, path, body)
                outcome = Outcome(first, detail)
                if first != 200:
                    outcome.retry = self._post(client, path, body)[0]
                self.outcomes.append(outcome)
                i += 1
                self.stop.wait(PACE_S)

    @staticmethod
    def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[int, str]:
        try:
            r = client.post(path, json=body)
        except httpx.TransportError as exc:
            return 0, type(exc).__name__
        return r.status_code, r.text[:200] if r.status_code != 200 else ""

    def finish(self) -> list[Outcome]:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return self.outcomes


CLIENTS = 2


def test_a_killed_replica_is_replaced_with_every_request_answered(ray_service: RayService) -> None:
    first = targets(ray_service.targets_dir)
    victim = sorted(first)[0]
    served_before = requests_total(first[victim])
    load = Load(ray_service.url)
    load.start(CLIENTS)
    try:
        wait_for(lambda: requests_total(first[victim]) >= served_before + 10, 30,
                 what="requests answered by the victim under the load")
        os.kill(victim, signal.SIGKILL)

        def replaced() -> dict[int, str] | None:
            now = targets(ray_service.targets_dir)  # the new replica prunes the dead one's file
            fresh = set(now) - set(first)
            return now if fresh and victim not in now and running_replicas() == REPLICAS else None

        now = wait_for(replaced, 120, 0.1, what=lambda: f"a replacement replica (running {running_replicas()}, "
                                                      f"targets {targets(ray_service.targets_dir)})")
        (new_pid,) = set(now) - set(first)
        wait_for(lambda: requests_total(now[new_pid]) >= 10, 60, what="requests answered by the replacement replica")
    finally:
        outcomes = load.finish()
    unanswered = [o for o in outcomes if not o.answered]
    assert not unanswered, f"{len(unanswered)} of {len(outcomes)} requests unanswered: {unanswered[:5]}"
    retried = [o for o in outcomes if o.retry is not None]
    assert len(retried) <= CLIENTS, f"more failed first tries than requests in flight at the kill: {retried}"


def test_a_redeploy_drains_the_old_replicas_and_the_apps_429_reaches_the_client(ray_service: RayService) -> None:
    """A graceful stop loses nothing, not even a first try. `serve.run` again (here one replica,
    a smaller queue) is a rolling update: Ray starts the new replica, stops routing to each old
    one and waits for its requests, then the old replica's `__del__` drains the app, stops the
    batchers and removes its scrape target; its process exits. The new replica's own admission
    then answers through Ray's proxy: 429 with its Retry-After (Ray's own limit is above it)."""
    from ray import serve

    before = targets(ray_service.targets_dir)
    load = Load(ray_service.url)
    load.start(CLIENTS)
    # at most CLIENTS requests of at most 2 items are queued at a time: the load is never refused
    smaller = ray_service.settings.model_copy(update={"queue_depth": 2 * CLIENTS})
    try:
        wait_for(lambda: len(load.outcomes) >= 10, 30, what="requests answered before the redeploy")
        app = serve_app.build(smaller, serve_app.Scaling(1), ray_service.export, num_cpus=1)
        serve.run(app, name=serve_app.APP_NAME, route_prefix="/", blocking=False)

        def rolled() -> bool:
            now = targets(ray_service.targets_dir)
            return (len(now) == 1 and not set(now) & set(before) and running_replicas() == 1
                    and not any(serve_app.alive(pid) for pid in before))

        wait_for(rolled, 120, 0.1, what=lambda: f"one new replica, the old ones gone (running {running_replicas()}, "
                                               f"targets {targets(ray_service.targets_dir)}, before {before})")
        at_end = len(load.outcomes)
        wait_for(lambda: len(load.outcomes) >= at_end + 10, 30, what="requests answered after the redeploy")
        too_many = httpx.post(f"{ray_service.url}/classify", json={"inputs": TEXTS * 2}, timeout=30)
    finally:
        outcomes = load.finish()
    failed = [o for o in outcomes if o.first != 200]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {failed[:5]}"
    assert too_many.status_code == 429, too_many.text
    assert too_many.json()["error"]["type"] == "queue_full"
    assert int(too_many.headers["retry-after"]) >= 1


def test_ray_limits_sit_above_the_apps_admission(model_repo: Path) -> None:
    """Ray's per-replica limit is above what the app can admit (every model's queue full and
    its workers busy), so the app answers 429 + Retry-After before Ray would queue or answer
    503; Ray's grace covers the app's drain; autoscaling targets one batch per replica."""
    settings = Settings(models_dir=model_repo, backends=["onnx", "onnx-int8"], queue_depth=100, model_workers=2)
    options = serve_app.deployment_options(settings, serve_app.Scaling(2))
    models = 6 * 2
    assert serve_app.models_served(settings) == models
    assert options["num_replicas"] == 2
    assert options["max_ongoing_requests"] >= models * (settings.queue_depth + settings.sort_window * 2)
    assert options["backpressure_config"].status_code == 429
    assert options["backpressure_config"].retry_after_s == settings.retry_after_s
    assert options["graceful_shutdown_timeout_s"] > settings.shutdown_grace_s
    auto = serve_app.deployment_options(settings, serve_app.Scaling(2, min_replicas=1, max_replicas=4))
    config = auto["autoscaling_config"]
    assert "num_replicas" not in auto
    assert (config.min_replicas, config.max_replicas, config.initial_replicas) == (1, 4, 2)
    assert config.target_ongoing_requests == settings.max_batch_size


def test_replica_del_drains_before_the_lifespan_shutdown() -> None:
    """The order in `DistilServe.__del__`, without Ray: the app's drain state is set (and its
    wait done) before Ray's ingress runs the lifespan shutdown that stops the batchers, and the
    metrics target goes last. (Ray's own ingress `__del__` runs the lifespan shutdown first and
    a user `__del__` after it, too late to drain.)"""
    import asyncio
    import logging

    from app.http.shutdown import Drain

    events: list[str] = []
    drain = Drain(grace_s=5)

    class Lifespan:
        logger = logging.getLogger("test")

        async def shutdown(self) -> None:
            events.append(f"lifespan shutdown, draining={drain.draining}")

    class Metrics:
        def close(self) -> None:
            events.append("metrics closed")

    class Probe(serve_app.DistilServe):
        def __del__(self) -> None:  # Python's finalizer, when the probe is collected: nothing to run
            pass

    replica = object.__new__(Probe)
    replica.service = type("App", (), {"state": type("State", (), {"drain": drain})()})()
    replica._serve_asgi_lifespan = Lifespan()
    replica.metrics = Metrics()
    asyncio.run(serve_app.DistilServe.__del__(replica))
    assert events == ["lifespan shutdown, draining=True", "metrics closed"]
