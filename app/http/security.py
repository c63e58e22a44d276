"""Optional API keys: when `api_keys` is set, every request outside `public_paths` must carry
one of them as `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every configured key
with no early exit, so neither a key's content nor its length shows in the response time.
A gate of the service middleware (app/middleware.py): one hash per request on the hot path."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.responses import Response
from starlette.types import Scope

from app.http.errors import TASK_BY_PATH, error_response

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="distilserve"'}


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries: `Authorization: Bearer` first, else `X-API-Key`."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip()
        elif name == b"x-api-key":
            api_key = value.strip()
    return bearer or api_key or None


class ApiKeys:
    """401 in the shared error shape for a missing or unknown key; public paths pass."""

    def __init__(self, keys: Iterable[str], public_paths: Iterable[str]) -> None:
        self.digests = [_digest(k.encode()) for k in keys]
        self.public = frozenset(public_paths)
        if not self.digests:
            raise ValueError("ApiKeys needs at least one key")

    def accepts(self, key: bytes) -> bool:
        """Constant-time membership: every key is compared, the results OR-ed."""
        digest, found = _digest(key), False
        for known in self.digests:
            found |= hmac.compare_digest(digest, known)
        return found

    def rejection(self, scope: Scope) -> Response | None:
        """None when the request may go on, else the 401 that answers it."""
        if scope["path"] in self.public:
            return None
        key = presented_key(scope["headers"])
        if key is not None and self.accepts(key):
            return None
        message = "invalid API key" if key is not None else (
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
        task = TASK_BY_PATH.get(scope["path"], "")
        return error_response("unauthorized", message, "authorization", dict(_CHALLENGE), task)
