"""Liveness, readiness and metrics: /health answers while the process lives, /ready only once
every model is loaded and warmed up (503 with the reason before that)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from app.http.errors import error_response
from app.http.responses import FastJSON
from app.http.schemas import ErrorResponse, HealthResponse, ReadyResponse
from app.observability.metrics import render

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
async def health() -> FastJSON:
    return FastJSON({"status": "ok"})


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ErrorResponse, "description": "not ready: the reason"}},
)
async def ready(request: Request) -> FastJSON:
    state = request.app.state
    if not state.ready:
        return error_response("not_ready", f"service not ready: {state.reason}")
    if state.missing:  # on_model_error = "skip": serving, but not everything it was asked to
        missing = "; ".join(f"{f.name} ({f.problem})" for f in state.missing)
        return error_response("not_ready", f"models not loaded: {missing}", "models")
    return FastJSON({"status": "ready", "models": len(state.registry.models)})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    body, content_type = render()
    return Response(body, media_type=content_type)
