"""Liveness, readiness and metrics: /health answers while the process lives, /ready only once
every model is loaded and warmed up (503 with the reason before that)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from app.responses import FastJSON

from app.errors import error_response
from app.metrics import render

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> FastJSON:
    return FastJSON({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> FastJSON:
    state = request.app.state
    if not state.ready:
        return error_response("not_ready", f"service not ready: {state.reason}")
    return FastJSON({"status": "ready", "models": len(state.registry.models)})


@router.get("/metrics")
async def metrics() -> Response:
    body, content_type = render()
    return Response(body, media_type=content_type)
