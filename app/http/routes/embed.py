"""POST /embed and POST /v1/embeddings (OpenAI shape): sentence embeddings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from app.http.deps import DirectRoute, RegistryDep, SettingsDep
from app.http.errors import ServiceError
from app.http.responses import FastJSON
from app.http.routes.common import check_limits, error_docs, items_and_usage, resolve, run_items
from app.http.schemas import EmbedRequest, EmbedResponse, OpenAIEmbeddingRequest, OpenAIEmbeddingResponse
from app.repository.registry import Registry, ServedModel
from app.settings import Settings
from inference.pipelines import EmbedItem
from inference.tasks.embed import normalize

router = APIRouter(tags=["inference"], route_class=DirectRoute)


async def embed_texts(
    texts: list[str], name: str | None, normalize: bool | None, truncate: bool, param: str,
    request: Request, registry: Registry, settings: Settings, *, checked: bool = False,
) -> tuple[ServedModel, list[dict[str, Any]]]:
    """Limits (unless `checked` by the caller), model, and the texts through the embedding
    model's batcher (also for the retrieval routes, which score these vectors)."""
    if not checked:
        check_limits(texts, settings, param)
    model = resolve(registry, request, name, "embedding", settings)
    outcomes = await run_items(model, prepare(texts, model, normalize, truncate), param)
    return model, outcomes


def prepare(texts: list[str], model: ServedModel, normalize: bool | None, truncate: bool) -> list[EmbedItem]:
    """The queued items; `normalize: None` takes the model's default (shared with POST /compare)."""
    norm = model.spec.normalize if normalize is None else normalize
    return [EmbedItem(i, t, norm, truncate) for i, t in enumerate(texts)]


def cut(vectors: list[np.ndarray], dimensions: int | None, model: ServedModel) -> list[np.ndarray]:
    """OpenAI's `dimensions`: the first N values of each vector, L2-normalised again; 422 naming
    the field and the model's size when N is larger."""
    if dimensions is None:
        return vectors
    size = int(vectors[0].shape[0]) if vectors else model.spec.hidden_size or 0
    if dimensions > size:
        raise ServiceError(
            "invalid_input", f"dimensions: must be at most {size}, the size of {model.name!r} (got {dimensions})",
            "dimensions",
        )
    return [normalize(v[:dimensions]) for v in vectors]


@router.post("/embed", response_model=EmbedResponse, responses=error_docs())
async def embed(body: EmbedRequest, request: Request, registry: RegistryDep, settings: SettingsDep) -> FastJSON:
    """Pooled sentence vectors (mean or CLS as the model's manifest says); `normalize: null`
    keeps the model's default L2 normalisation."""
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    model, outcomes = await embed_texts(
        texts, body.model, body.normalize, body.truncate, "inputs", request, registry, settings
    )
    items, usage = items_and_usage(outcomes)
    vectors = cut([o["result"] for o in outcomes], body.dimensions, model)
    return FastJSON(
        {
            "model": model.name,
            "embeddings": vectors,
            "dim": int(vectors[0].shape[0]) if vectors else 0,
            "items": items,
            "usage": usage,
        }
    )


def _encode(vector: np.ndarray, fmt: str) -> Any:
    """OpenAI's base64 format is the little-endian float32 bytes of the vector."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode() if fmt == "base64" else vector


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse, responses=error_docs())
async def openai_embeddings(
    body: OpenAIEmbeddingRequest, request: Request, registry: RegistryDep, settings: SettingsDep
) -> FastJSON:
    """Drop-in for clients of the OpenAI embeddings API (normalised as the model's default)."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    model, outcomes = await embed_texts(texts, body.model, None, True, "input", request, registry, settings)
    tokens = sum(o["tokens"] for o in outcomes)
    vectors = cut([o["result"] for o in outcomes], body.dimensions, model)
    fmt = body.encoding_format
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)} for i, v in enumerate(vectors)]
    return FastJSON(
        {
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
