"""POST /classify: sentiment-style labels for texts or text pairs."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.http.deps import DirectRoute, RegistryDep, SettingsDep
from app.http.responses import FastJSON
from app.http.routes.common import check_limits, check_max, error_docs, resolve_servable, results_body, run_items
from app.http.schemas import ClassifyRequest, ClassifyResponse
from app.settings import Settings
from inference.pipelines import ClassifyItem

router = APIRouter(tags=["inference"], route_class=DirectRoute)


def prepare(body: ClassifyRequest, settings: Settings) -> list[ClassifyItem]:
    """Enforce the limits and build the queued items (shared with POST /compare)."""
    inputs = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    texts = [t if isinstance(t, str) else t[0] + t[1] for t in inputs]
    check_limits(texts, settings)
    check_max(body.top_k, settings.max_top_k, "top_k")
    return [
        ClassifyItem(i, t if isinstance(t, str) else (t[0], t[1]), body.truncate, body.top_k)
        for i, t in enumerate(inputs)
    ]


@router.post("/classify", response_model=ClassifyResponse, responses=error_docs())
async def classify(
    body: ClassifyRequest, request: Request, registry: RegistryDep, settings: SettingsDep
) -> FastJSON:
    """Labels with scores per input (softmax over the head, sigmoid for one-logit heads),
    best first; `top_k: null` returns every label."""
    payloads = prepare(body, settings)
    model = resolve_servable(registry, request, body.model, "classification", settings)
    outcomes = await run_items(model, payloads)
    return FastJSON(results_body(model, outcomes))
