"""Annotated dependencies: routes declare what they need, the app state provides it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.http.errors import ServiceError
from app.repository.registry import Registry
from app.settings import Settings


async def get_settings(request: Request) -> Settings:
    """async on purpose: FastAPI runs a plain `def` dependency in its thread pool, two thread
    hops per request that cost more than the whole route."""
    settings: Settings = request.app.state.settings
    return settings


async def get_registry(request: Request) -> Registry:
    """The loaded registry; 503 until every model is loaded and warmed up."""
    state = request.app.state
    if not state.ready:
        raise ServiceError("not_ready", f"service not ready: {state.reason}")
    registry: Registry = state.registry
    return registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
