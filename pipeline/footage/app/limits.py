"""A limit on the size of a request body, enforced while the body streams in.

Starlette spools a multipart upload to a temporary file as it parses the form, before any
route sees it, so a size check in the route comes after the whole body was taken in (and a
large one filled the temporary folder). :class:`BodyLimit` sits in front of the app: a
request whose ``Content-Length`` is over the limit is answered 413 without reading a byte,
and a body without one (chunked) is counted as it arrives and cut off with a 413 as soon as
it passes the limit.
"""
from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse


def too_large(limit: int) -> str:
    return f"the request is larger than {limit / 2**20:g} MB"


class BodyLimit:
    """ASGI middleware: at most ``limit`` bytes of body per HTTP request, else 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": too_large(self.limit)}, status_code=413)(
                scope, receive, send)
            return
        await self.app(scope, self._counted(receive), send)

    def _counted(self, receive):
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:   # the parser stops here; its handler answers 413
                    raise HTTPException(413, too_large(self.limit))
            return message
        return counted
