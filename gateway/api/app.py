"""The CRM's HTTP API (everything under /v1): the FastAPI application.

Routes live in gateway/api/routes/ (one module per resource); each looks things up
within the token's organisation and runs its database work in the API's own threads
(gateway/api/context.py).  Errors are RFC 9457 problem documents (problems.py).  The
OpenAPI 3.1 document is generated from the code and served at /v1/openapi.json.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from fastapi import FastAPI

from gateway import __version__
from gateway.api import auth, problems
from gateway.api.context import ApiContext

# Request bodies larger than this are refused with 413 (an NDJSON import of 10,000
# lines of a few hundred bytes each fits).
MAX_BODY_BYTES = 8 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyLimit:
    """413 for a body over ``limit`` octets: at once from Content-Length, or while it
    streams in (chunked); the route never sees a cut body."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Raised where the route reads its body: answered as a problem (413).
                    raise problems.Problem(413, f"request body over {self.limit} octets")
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"type": "about:blank", "title": "Content Too Large", "status": 413,
                           "detail": f"request body over {self.limit} octets"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", problems.MEDIA_TYPE.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def build_app(context: ApiContext) -> Any:
    from gateway.api.routes import ROUTERS

    app = FastAPI(
        title="CRM mail gateway API", version=__version__,
        description="What the gateway filed, the contacts and leads it matches, records, dropbox addresses "
                    "and quota, per organisation. Authorization: Bearer <token> (`gateway token create`).",
        openapi_url="/v1/openapi.json", docs_url=None, redoc_url=None,
        # /v1/records/ is not /v1/records: a 404 problem, not a redirect without a body.
        redirect_slashes=False,
    )
    app.state.context = context
    problems.install(app, auth.gate)
    for router in ROUTERS:
        app.include_router(router, prefix="/v1", responses=problems.RESPONSES)
    _document_problems(app)
    return BodyLimit(app, MAX_BODY_BYTES)


def _document_problems(app: FastAPI) -> None:
    """The OpenAPI document names ProblemDocument as the body of every error."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            components["ProblemDocument"] = problems.ProblemDocument.model_json_schema()
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
