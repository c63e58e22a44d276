"""Session fixtures: the tiny model repository (built once, offline) and a way to run the
real app (lifespan included) behind an httpx client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.polling import wait_for_async
from tests.tiny import build_repository

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.repository.loading import BackendSource
    from app.settings import Settings

logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime.quantization's advice lines


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny models (sst2/squad/embed x teacher/student) with torch, ONNX and int8 files."""
    return build_repository(tmp_path_factory.mktemp("models"))


@contextlib.asynccontextmanager
async def serve_app(settings: Settings, wait_ready: bool = True, backend_source: BackendSource | None = None
                    ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Create the app, run its lifespan, and yield it with a client once /ready says 200."""
    from app.main import create_app

    app = create_app(settings, backend_source=backend_source)
    async with app.router.lifespan_context(app):
        # 500s are answered, then re-raised for the server log
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            if wait_ready:
                await wait_until_ready(client)
            yield app, client


@contextlib.asynccontextmanager
async def serve(settings: Settings, wait_ready: bool = True, backend_source: BackendSource | None = None
                ) -> AsyncIterator[httpx.AsyncClient]:
    """`serve_app`'s client alone."""
    async with serve_app(settings, wait_ready, backend_source) as (_, client):
        yield client


async def wait_until_ready(client: httpx.AsyncClient, timeout_s: float = 60) -> None:
    last: list[httpx.Response] = []

    async def ready() -> bool:
        last[:] = [await client.get("/ready")]
        return last[0].status_code == 200

    await wait_for_async(ready, timeout_s, 0.05, what=lambda: f"/ready to say 200 (last: {last[0].text})")


@pytest.fixture(scope="session")
async def client(model_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    """One app serving every tiny model on ONNX (plain names), torch and int8 (`@backend`)."""
    from app.settings import Settings

    settings = Settings(  # bursts of concurrent requests here test answers, not admission: a wide budget
        models_dir=model_repo, backends=["onnx", "torch", "onnx-int8"], threads=1, max_queue_wait_ms=600_000
    )
    async with serve(settings) as c:
        yield c
