"""One shared real server (every tiny model on ONNX, torch and int8) for the module-independent
reliability tests; tests that need their own settings start their own (tests/reliability/server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.server import Server, running


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    # 1,000 requests at once on a shared 2-core machine may queue for longer than the default
    # 30 s deadline: a deadline is not what those tests are about
    env = {"DISTILSERVE_BACKENDS": '["onnx","torch","onnx-int8"]', "DISTILSERVE_QUEUE_DEPTH": "4096",
           "DISTILSERVE_REQUEST_DEADLINE_S": "300", "DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000"}
    with running(model_repo, log, env) as s:
        yield s
