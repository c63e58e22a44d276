"""The FastAPI application: `uvicorn app.main:app` serves the models folder of the settings.

Models load in the background after start-up so that /health answers at once and /ready tells
an orchestrator, with a reason, when the service can take traffic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.http import errors, middleware
from app.http.responses import FastJSON
from app.http.routes import classify, compare, embed, health, models, playground, qa, retrieval
from app.http.shutdown import install_sigterm
from app.observability.logs import flush_logs
from app.observability.metrics import register_cascade
from app.repository import faults
from app.repository.loading import BackendSource, load_all
from app.repository.registry import Registry, ServedModel
from app.settings import Settings
from app.shadow.hub import install as install_shadow

log = logging.getLogger("distilserve")


async def _load(app: FastAPI, settings: Settings, source: BackendSource | None = None) -> None:
    state = app.state
    try:
        served: list[ServedModel] = await load_all(settings, state, source)
        state.served = served  # stopped at shutdown even if the registry below refuses them
        # a default pair that is not served is refused here
        registry = Registry(served, settings.default_pairs(), settings.cascade_thresholds)
    except Exception as exc:  # noqa: BLE001 - the reason is reported on /ready, not raised
        log.exception("model loading failed")
        state.reason = faults.public_text(f"model loading failed: {type(exc).__name__}: {exc}", settings.models_dir)
        return
    state.registry = registry
    for cascade in registry.cascades.values():
        register_cascade(cascade.name, cascade.task, cascade.pair, cascade.backend_kind)
    state.shadow = install_shadow(served, settings)
    state.ready = True
    state.reason = "ready"


def _add_routes(app: FastAPI, *modules: ModuleType) -> None:
    """Each module's routes straight into the app's router, in order. `include_router` keeps an
    included router as a level of its own that every request walks (FastAPI 0.16x): 14 us of
    event-loop CPU per request, ~13% of the route path. Nothing is set at include (no prefix,
    dependencies or response class), so the routes and the OpenAPI document are the same;
    `app.dependency_overrides` would not reach these routes (nothing here uses it)."""
    for module in modules:
        app.router.routes.extend(module.router.routes)


def create_app(settings: Settings | None = None, *, backend_source: BackendSource | None = None) -> FastAPI:
    """Build the app; settings are read (and validated) from the environment when not given.
    `backend_source` replaces where models' backends come from (tests: deterministic dummies);
    by default they are loaded from each folder's files."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ready, app.state.reason, app.state.served = False, "starting", []
        app.state.missing = await asyncio.to_thread(  # raises (refuses to start) in `fail` mode
            faults.check_repository, settings.models_dir, settings.backends, settings.on_model_error
        )
        loader = asyncio.create_task(_load(app, settings, backend_source))
        undo_sigterm = install_sigterm(app.state.drain)
        try:
            yield
        finally:
            undo_sigterm()
            loader.cancel()
            if getattr(app.state, "shadow", None) is not None:
                app.state.shadow.close()
            for model in app.state.served:
                model.batcher.stop()
            flush_logs()  # the access lines still held

    app = FastAPI(
        title="distilserve", version="0.1.0", lifespan=lifespan, default_response_class=FastJSON,
        # FastAPI's OpenTelemetry bridge, unused here (Prometheus metrics): off, the check for a
        # configured provider on every request is skipped (7 us of event-loop CPU per request)
        telemetry={"tracing": False, "metrics": False, "logs": False},
        description="A BERT-size teacher and its distilled student, side by side, on PyTorch or ONNX Runtime.",
    )
    app.state.settings = settings
    app.state.ready, app.state.reason, app.state.served = False, "starting", []
    errors.install(app)
    _add_routes(app, classify, qa, embed, retrieval, compare, models, health, playground)
    app.state.missing = []
    app.state.drain = middleware.install(app, settings)
    return app


class _LazyApp:
    """`uvicorn app.main:app` imports this module; settings are read when the server starts,
    not at import, so importing the package never needs a models folder."""

    def __init__(self) -> None:
        self._app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            try:
                self._app = create_app()
            except ValueError as exc:  # pydantic's ValidationError names the bad setting
                if scope["type"] != "lifespan":
                    raise
                await receive()
                await send({"type": "lifespan.startup.failed", "message": f"invalid settings: {exc}"})
                return
        await self._app(scope, receive, send)


app = _LazyApp()
