"""GET /models: what is served, on which backend, and how good its manifest says it is."""

from __future__ import annotations

from fastapi import APIRouter

from app.http.deps import DirectRoute, RegistryDep
from app.http.responses import FastJSON
from app.http.routes.common import error_docs
from app.http.schemas import ModelsResponse

router = APIRouter(tags=["models"], route_class=DirectRoute)


@router.get("/models", response_model=ModelsResponse, responses=error_docs())
async def list_models(registry: RegistryDep) -> FastJSON:
    return FastJSON({"models": [m.describe() for m in registry.models.values()], "pairs": registry.describe_pairs(),
                     "cascades": registry.describe_cascades()})
