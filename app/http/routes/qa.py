"""POST /qa: extractive question answering with character offsets into the context."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.http.deps import DirectRoute, RegistryDep, SettingsDep
from app.http.responses import FastJSON
from app.http.routes.common import check_limits, check_max, error_docs, resolve_servable, results_body, run_items
from app.http.schemas import QARequest, QAResponse
from app.settings import Settings
from inference.pipelines import QAItem

router = APIRouter(tags=["inference"], route_class=DirectRoute)


def prepare(body: QARequest, settings: Settings) -> list[QAItem]:
    """Enforce the limits and build the queued items (shared with POST /compare)."""
    pairs = body.pairs()
    check_limits([p.question + p.context for p in pairs], settings)
    check_max(body.top_k, settings.max_top_k, "top_k")
    check_max(body.doc_stride, settings.max_doc_stride, "doc_stride")
    check_max(body.max_answer_len, settings.max_answer_len_limit, "max_answer_len")
    return [
        QAItem(
            i,
            p.question,
            p.context,
            body.top_k,
            body.max_answer_len,
            body.doc_stride,
            body.handle_impossible_answer,
            body.max_windows,
        )
        for i, p in enumerate(pairs)
    ]


@router.post("/qa", response_model=QAResponse, responses=error_docs())
async def answer(body: QARequest, request: Request, registry: RegistryDep, settings: SettingsDep) -> FastJSON:
    """Best spans per question over every window of its context (`context[start:end] == answer`);
    with `handle_impossible_answer` the empty answer competes."""
    payloads = prepare(body, settings)
    model = resolve_servable(registry, request, body.model, "qa", settings)
    outcomes = await run_items(model, payloads)
    return FastJSON(results_body(model, outcomes))
