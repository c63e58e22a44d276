"""Session fixtures: the tiny model repository (built once, offline) and a way to run the
real app (lifespan included) behind an httpx client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.tiny import build_repository

logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime.quantization's advice lines


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny models (sst2/squad/embed x teacher/student) with torch, ONNX and int8 files."""
    return build_repository(tmp_path_factory.mktemp("models"))


@contextlib.asynccontextmanager
async def serve(settings: object, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Create the app, run its lifespan, and yield a client once /ready says 200."""
    from app.main import create_app

    app = create_app(settings)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # 500s are answered, then re-raised for the server log
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            if wait_ready:
                await wait_until_ready(client)
            yield client


async def wait_until_ready(client: httpx.AsyncClient, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    while (response := await client.get("/ready")).status_code != 200:
        assert loop.time() < until, response.text
        await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
async def client(model_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    """One app serving every tiny model on ONNX (plain names), torch and int8 (`@backend`)."""
    from app.settings import Settings

    settings = Settings(  # bursts of concurrent requests here test answers, not admission: a wide budget
        models_dir=model_repo, backends=["onnx", "torch", "onnx-int8"], threads=1, max_queue_wait_ms=600_000
    )
    async with serve(settings) as c:
        yield c
