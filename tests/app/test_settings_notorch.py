"""Start-up validation of settings, and the ONNX path serving with torch absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings

NO_TORCH = """
import asyncio, json, sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
sys.modules["transformers"] = None
import httpx
from app.main import create_app
from app.settings import Settings

async def main():
    app = create_app(Settings(models_dir=sys.argv[1], backends=["onnx", "onnx-int8"]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            while (await c.get("/ready")).status_code != 200:
                await asyncio.sleep(0.05)
            r = await c.post("/classify", json={"inputs": "a good film"})
            q = await c.post("/qa", json={"question": "who?", "context": "the fox", "model": "student@onnx-int8"})
            e = await c.post("/embed", json={"inputs": "a good film"})
    print(json.dumps({"codes": [r.status_code, q.status_code, e.status_code], "classify": r.json(),
                      "torch_loaded": sys.modules.get("torch") is not None}))

asyncio.run(main())
"""


def test_onnx_serving_needs_no_torch(model_repo: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(model_repo)], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["codes"] == [200, 200, 200]
    assert not out["torch_loaded"]
    assert out["classify"]["results"][0][0]["label"] in ("negative", "positive")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DISTILSERVE_BACKENDS": '["onnx", "tpu"]'}, "tpu"),
        ({"DISTILSERVE_MAX_BATCH_SIZE": "0"}, "max_batch_size"),
        ({"DISTILSERVE_GRAPH_OPTIMIZATION": "turbo"}, "turbo"),
        ({"DISTILSERVE_MODELS_DIR": "/nonexistent/models"}, "/nonexistent/models"),
        ({"DISTILSERVE_MAX_WAIT_MS": "soon"}, "max_wait_ms"),
    ],
)
def test_bad_settings_name_the_value(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch, model_repo: Path
) -> None:
    monkeypatch.setenv("DISTILSERVE_MODELS_DIR", str(model_repo))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert named in str(info.value)


def test_uvicorn_refuses_to_start_on_bad_settings(model_repo: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {"DISTILSERVE_MODELS_DIR": str(model_repo), "DISTILSERVE_BACKENDS": '["cuda"]', "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "cuda" in proc.stderr
