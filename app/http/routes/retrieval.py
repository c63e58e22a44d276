"""POST /similarity and POST /rerank (text-embeddings-inference's request bodies): cosine of the
bi-encoder's normalised vectors, batched through the embedding model's batcher like /embed."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from app.http.deps import DirectRoute, RegistryDep, SettingsDep
from app.http.errors import ServiceError
from app.http.responses import FastJSON
from app.http.routes.common import check_limits, error_docs, items_and_usage
from app.http.routes.embed import embed_texts
from app.http.schemas import RerankRequest, RerankResponse, SimilarityRequest, SimilarityResponse
from app.repository.registry import Registry
from app.settings import Settings

router = APIRouter(tags=["inference"], route_class=DirectRoute)


async def _scores(
    first: tuple[str, str], others: tuple[list[str], str], name: str | None, request: Request, registry: Registry,
    settings: Settings,
) -> tuple[str, list[float], dict[str, Any]]:
    """Cosine of the `first` text with each of the `others` (text(s), field name), all in one
    request; the model's name and the body's `items` and `usage` (first text first)."""
    (text, first_param), (texts, param) = first, others
    if len(texts) + 1 > settings.max_items:
        message = f"{len(texts)} texts and 1 {first_param} exceed the limit of {settings.max_items} items"
        raise ServiceError("payload_too_large", message, param)
    check_limits([text], settings, first_param)
    check_limits(texts, settings, param)
    model, outcomes = await embed_texts(
        [text, *texts], name, True, True, param, request, registry, settings, checked=True
    )
    vectors = np.stack([o["result"] for o in outcomes])  # [1 + n, dim], unit length
    scores = (vectors[1:] @ vectors[0]).astype(float).tolist()
    items, usage = items_and_usage(outcomes)
    return model.name, scores, {"items": items, "usage": usage}


@router.post("/similarity", response_model=SimilarityResponse, responses=error_docs())
async def similarity(body: SimilarityRequest, request: Request, registry: RegistryDep, settings: SettingsDep
                     ) -> FastJSON:
    """Cosine similarity of `source_sentence` with each of `sentences`, in their order."""
    inputs = body.inputs
    name, scores, rest = await _scores(
        (inputs.source_sentence, "inputs.source_sentence"), (inputs.sentences, "inputs.sentences"), body.model,
        request, registry, settings,
    )
    return FastJSON({"model": name, "scores": scores, **rest})


@router.post("/rerank", response_model=RerankResponse, responses=error_docs())
async def rerank(body: RerankRequest, request: Request, registry: RegistryDep, settings: SettingsDep) -> FastJSON:
    """`texts` ranked by cosine with `query`, best first; `top_n` keeps the best N."""
    name, scores, rest = await _scores(
        (body.query, "query"), (body.texts, "texts"), body.model, request, registry, settings
    )
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.top_n]
    results = [{"index": i, "score": scores[i], **({"text": body.texts[i]} if body.return_text else {})} for i in order]
    return FastJSON({"model": name, "results": results, **rest})
