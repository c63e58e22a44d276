"""Scale-out on Ray Serve: every replica is a whole distilserve service (its models, batchers,
admission, drain and Prometheus registry), built by `app.main.create_app` inside the replica.

  python -m deploy.ray.serve_app --models models --replicas 2 --port 8000
  python -m deploy.ray.serve_app --models models --min-replicas 1 --max-replicas 4 --port 8000

Why each piece is the way it is:

- The app is built in the replica (`__serve_build_asgi_app__`, Ray's late-bound ingress), not
  in the driver: models, ONNX sessions and worker threads cannot be pickled, and each replica
  must own its own. Its FastAPI lifespan (model loading) runs in the replica, and Ray is told
  the replica is up only once every model is loaded (`_ready_lifespan`), so the router never
  sends traffic to a replica that would answer 503 `not_ready`.
- Admission stays the app's: `max_ongoing_requests` is set above what the app itself can admit
  (`admission_bound`), so an overloaded replica answers its own 429 with a Retry-After from its
  measured service rate. Had Ray's limit been lower, requests would queue in Ray's proxy instead,
  and past `max_queued_requests` Ray answers 503 with no Retry-After (by default).
- Shutdown drains like SIGTERM does under uvicorn: Ray stops routing to the replica, waits for
  its ongoing requests, then calls `__del__`, where the app's `Drain` turns /ready to 503 and
  refuses late arrivals with 503 `shutting_down`, waits for the admitted ones (at most
  `shutdown_grace_s`), and only then the lifespan stops the batchers.
- Metrics: every replica is its own process with its own registry, and a scrape of /metrics
  through Ray's proxy reaches one replica at random. So each replica serves its registry on its
  own port (`ReplicaMetrics`, an OS-chosen port) and writes a Prometheus file_sd target file,
  one per replica, into `targets_dir`; Prometheus reads them with
  `file_sd_configs: [{files: ["<targets_dir>/*.json"]}]`. A replica removes its file on a
  graceful stop; a killed one's file is pruned by the next replica started on that node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.config import AutoscalingConfig, BackpressureConfig

from app.settings import Settings

log = logging.getLogger("distilserve")

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "distilserve"
DEPLOYMENT_NAME = "distilserve"
CONTROL_HEADROOM = 32  # /health, /ready, /metrics, /models: never queued at a model, cheap
SHUTDOWN_MARGIN_S = 5.0  # Ray's grace beyond the app's drain: the lifespan shutdown after it
LOAD_POLL_S = 0.05
DEFAULT_WORKERS = 2  # `model_workers` unset: ONNX Runtime picks 1 or 2 at warm-up
LOAD_TIMEOUT_S = 600.0  # a replica whose models are not loaded by then fails its start


# ---- sizing -------------------------------------------------------------------------------
def models_served(settings: Settings) -> int:
    """How many (model, backend) queues a replica will run: the model folders times the
    backends (an upper bound: a folder without a backend's file is not served on it), plus hub
    models. Read from the models folder on the driver; every node must hold the same folder."""
    from app.repository.registry import discover

    folders = len(discover(settings.models_dir)) if settings.models_dir.is_dir() else 0
    return max(1, folders * len(settings.backends) + len(settings.hub_models))


def admission_bound(settings: Settings, models: int) -> int:
    """The most requests one replica can hold without answering 429 itself: per model queue,
    `queue_depth` items waiting plus the items its workers have taken (a window of
    `collect_limit` each); every request is at least one item. `max_ongoing_requests` above
    this never makes Ray queue or refuse what the app would have admitted."""
    from app.engine.queue import BatchConfig

    window = BatchConfig(max_batch_size=settings.max_batch_size, sort_by_length=settings.sort_by_length,
                         sort_window=settings.sort_window).collect_limit
    workers = settings.model_workers or DEFAULT_WORKERS
    return models * (settings.queue_depth + window * workers) + CONTROL_HEADROOM


@dataclass(frozen=True, slots=True)
class Scaling:
    """A fixed replica count, or autoscaling between `min_replicas` and `max_replicas` on
    ongoing requests per replica (None: one full batch of single-item requests per replica,
    `max_batch_size`, the load at which a replica's batcher is kept busy)."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None

    def options(self, settings: Settings) -> dict[str, Any]:
        if self.min_replicas is None and self.max_replicas is None:
            return {"num_replicas": self.replicas}
        low = self.min_replicas if self.min_replicas is not None else 1
        high = self.max_replicas if self.max_replicas is not None else max(low, self.replicas)
        target = self.target_ongoing_requests or float(settings.max_batch_size)
        config = AutoscalingConfig(min_replicas=low, max_replicas=high, target_ongoing_requests=target,
                                   initial_replicas=min(max(self.replicas, low), high))
        return {"autoscaling_config": config}


def deployment_options(settings: Settings, scaling: Scaling, num_cpus: float = 1.0) -> dict[str, Any]:
    """Ray Serve options for the deployment, derived from the app's settings (see the module
    docstring): Ray's per-replica limit above the app's admission, a backpressure answer that
    at least carries a Retry-After if Ray's queue limit is ever set and reached, and a
    graceful-shutdown budget that covers the app's drain plus its lifespan shutdown."""
    return {
        **scaling.options(settings),
        "max_ongoing_requests": admission_bound(settings, models_served(settings)),
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=float(settings.retry_after_s)),
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s + SHUTDOWN_MARGIN_S,
        "graceful_shutdown_wait_loop_s": 0.2,
        "health_check_period_s": 2.0,
        "ray_actor_options": {"num_cpus": num_cpus},
    }


# ---- metrics: one scrape target per replica -------------------------------------------------
@dataclass(frozen=True, slots=True)
class MetricsExport:
    """Where replicas serve their registries: `host` to bind (0.0.0.0: every interface, the
    node's IP advertised) and the folder of file_sd target files (None: no files)."""

    host: str = "0.0.0.0"
    targets_dir: Path | None = None


@dataclass
class ReplicaMetrics:
    """One replica's metrics server and its target file `<node ip>_<pid>.json`."""

    export: MetricsExport
    replica: str
    port: int = 0
    path: Path | None = None
    _server: Any = field(default=None, repr=False)

    def start(self) -> None:
        from prometheus_client import start_http_server

        from app.observability.metrics import REGISTRY

        self._server, _ = start_http_server(0, addr=self.export.host, registry=REGISTRY)
        self.port = int(self._server.server_port)
        if self.export.targets_dir is not None:
            self.path = self._write_target(self.export.targets_dir)

    def _write_target(self, folder: Path) -> Path:
        """Atomically (rename), so Prometheus never reads half a file; dead replicas' files on
        this node go first (a SIGKILLed replica never removed its own)."""
        folder.mkdir(parents=True, exist_ok=True)
        node = advertised_host(self.export.host)
        prune_targets(folder, node)
        target = [{"targets": [f"{node}:{self.port}"],
                   "labels": {"replica": self.replica, "deployment": DEPLOYMENT_NAME}}]
        path = folder / f"{node}_{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(target))
        tmp.replace(path)
        return path

    def close(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def advertised_host(bind: str) -> str:
    """The address Prometheus should scrape: the bind address, or the node's IP for 0.0.0.0."""
    if bind not in ("0.0.0.0", "::", ""):
        return bind
    import ray

    return str(ray.util.get_node_ip_address())


def prune_targets(folder: Path, node: str) -> None:
    """Remove this node's target files whose process is gone."""
    for path in folder.glob(f"{node}_*.json"):
        pid = path.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not alive(int(pid)):
            path.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """Whether a process of this node runs under `pid`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- the replica ----------------------------------------------------------------------------
class _Replica:
    """The user class Ray's ingress wraps: holds the settings and the metrics server; the app is
    built by `__serve_build_asgi_app__` after this constructor, on the replica."""

    def __init__(self, settings: Settings, export: MetricsExport | None = None) -> None:
        self.settings = settings
        self.service: FastAPI | None = None
        replica = serve.get_replica_context().replica_tag
        self.metrics = ReplicaMetrics(export, replica) if export is not None else None
        if self.metrics is not None:
            self.metrics.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The service itself, one per replica; its lifespan start waits for the models."""
        from app.main import create_app

        self.service = create_app(self.settings)
        _ready_lifespan(self.service, LOAD_TIMEOUT_S)
        return self.service

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose app is not ready is restarted."""
        app = self.service
        if app is not None and not app.state.ready and not app.state.drain.draining:
            raise RuntimeError(f"not ready: {app.state.reason}")


def _ready_lifespan(app: FastAPI, timeout_s: float) -> None:
    """Make the app's lifespan start-up return only once the models are loaded (the app loads
    them in the background so that /health answers at once under uvicorn). Under Ray the
    replica counts as started when the lifespan start-up returns, so this keeps traffic away
    until it can be served; a failed load fails the replica's start, which Ray retries."""
    inner: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state:
            await wait_loaded(application, timeout_s)
            yield state

    app.router.lifespan_context = lifespan


async def wait_loaded(app: FastAPI, timeout_s: float) -> None:
    """Poll the app's loading state until ready; raise with its reason if loading failed."""
    until = time.monotonic() + timeout_s
    while not app.state.ready:
        reason = str(app.state.reason)
        if reason.startswith("model loading failed"):
            raise RuntimeError(reason)
        if time.monotonic() > until:
            raise TimeoutError(f"models not loaded after {timeout_s:g} s: {reason}")
        await asyncio.sleep(LOAD_POLL_S)


_Ingress: Any = serve.ingress()(_Replica)


class DistilServe(_Ingress):  # type: ignore[misc]  # a class Ray builds at import
    """The deployment class: Ray's ASGI ingress around `_Replica`, with the drain put before the
    ingress' own `__del__` (which runs the lifespan shutdown: batchers stopped)."""

    async def __del__(self) -> None:
        app: FastAPI | None = getattr(self, "service", None)
        if app is not None:
            await app.state.drain.run(lambda: None, lambda: None)
        await super().__del__()
        metrics: ReplicaMetrics | None = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.close()


def build(settings: Settings, scaling: Scaling, export: MetricsExport | None = None,
          num_cpus: float = 1.0) -> Any:
    """The bound Ray Serve application (pass it to `serve.run`)."""
    options = deployment_options(settings, scaling, num_cpus)
    deployment = serve.deployment(name=DEPLOYMENT_NAME, **options)(DistilServe)
    return deployment.bind(settings, export)


# ---- running it locally -----------------------------------------------------------------------
def start_ray(num_cpus: int | None = None) -> None:
    """A local Ray instance, no dashboard. Workers get the repository on PYTHONPATH (they import
    `deploy.ray.serve_app` to unpickle the deployment); token auth is off unless RAY_AUTH_MODE
    says otherwise (Ray 2.60 turns it on for new local clusters and writes ~/.ray/auth_token)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def serve_local(app: Any, host: str, port: int) -> None:
    """Start Serve's HTTP proxy on host:port and deploy; returns once every replica is up."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def stop_local() -> None:
    """Graceful: every replica drains (its `__del__`) before Ray stops."""
    import ray

    with contextlib.suppress(Exception):  # noqa: BLE001 - best effort on the way out
        serve.shutdown()
    ray.shutdown()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="models folder (default: DISTILSERVE_MODELS_DIR or models)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas (initial replicas when autoscaling)")
    parser.add_argument("--min-replicas", type=int, help="autoscale: at least this many replicas")
    parser.add_argument("--max-replicas", type=int, help="autoscale: at most this many replicas")
    parser.add_argument("--target-ongoing", type=float, help="autoscale: ongoing requests per replica "
                        "(default: max_batch_size)")
    parser.add_argument("--host", default="127.0.0.1", help="Serve's HTTP proxy address")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address replicas' metrics servers bind")
    parser.add_argument("--targets-dir", type=Path, default=Path("/tmp/distilserve-ray-targets"),
                        help="Prometheus file_sd folder: one <node>_<pid>.json per replica")
    parser.add_argument("--num-cpus", type=int, help="CPUs Ray may schedule (default: the machine's)")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then drain every replica and stop Ray."""
    args = parse_args(argv)
    settings = Settings(models_dir=args.models) if args.models else Settings()
    scaling = Scaling(args.replicas, args.min_replicas, args.max_replicas, args.target_ongoing)
    start_ray(args.num_cpus)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve_local(build(settings, scaling, MetricsExport(args.metrics_host, args.targets_dir), args.replica_cpus),
                    args.host, args.port)
        print(f"serving on http://{args.host}:{args.port}; metrics targets in {args.targets_dir}", file=sys.stderr)
        stop.wait()
    finally:
        stop_local()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
