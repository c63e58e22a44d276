"""GET /models: what is served, on which backend, and how good its manifest says it is."""

from __future__ import annotations

from fastapi import APIRouter
from app.responses import FastJSON

from app.deps import RegistryDep
from app.routes.common import error_docs
from app.schemas import ModelsResponse

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsResponse, responses=error_docs())
async def list_models(registry: RegistryDep) -> FastJSON:
    return FastJSON({"models": [m.describe() for m in registry.models.values()]})
