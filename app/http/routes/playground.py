"""GET / and GET /playground: the side-by-side page (teacher, student and cascade on one input).

One static HTML file with its CSS and JS inline (no build step, no external assets: the service
runs offline), read once at import from the package (`app/http/static/`, package data in
pyproject.toml, so an installed package serves it too). The page calls the public API only, from
the browser; the routes are public (`public_paths`) and kept out of the OpenAPI document."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

PAGE = (files("app.http") / "static" / "playground.html").read_bytes()

# Nothing but this page's inline code and calls to this service; no framing, no caching of a page
# that may change with the release.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
@router.get("/playground", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)
