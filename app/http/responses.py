"""orjson responses: numpy vectors serialise without a Python list round-trip, and the body is
built once (routes return ready responses, so FastAPI skips a second validation pass)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class FastJSON(JSONResponse):
    """A JSONResponse subclass, so that /openapi.json documents each route's response model
    (FastAPI documents any other response class as a bare string)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_OPTIONS)
