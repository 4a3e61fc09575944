"""The API's one error shape: RFC 9457 problem documents (application/problem+json).

Routes raise ``Problem``; FastAPI's own errors (validation, 404/405 of the router) and
anything unexpected are turned into problem documents here, so no response of the API
is ever a bare string, an HTML page or a traceback."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import logs

log = logs.get("gateway.api")

MEDIA_TYPE = "application/problem+json"
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
           500: "Internal Server Error", 503: "Service Unavailable"}


class ProblemDocument(BaseModel):
    """RFC 9457 problem details: every error of the API has this shape."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def documented(description: str) -> dict[str, Any]:
    """An error answer of an operation, in the OpenAPI document: a problem document."""
    return {"description": description,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDocument"}}}}


# What any /v1 operation may answer besides its own responses (in the OpenAPI document).
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: documented("the body is not well-formed JSON"),
    401: documented("no, unknown or revoked bearer token"),
    403: documented("a read token on a write operation"),
    404: documented("no such thing in the token's organisation (or not shared with its user)"),
    413: documented("request body too large"),
    422: documented("invalid request: the detail names each problem"),
    503: documented("the database is unavailable; retry later"),
}


class Problem(Exception):
    """An error answer: status, a detail saying what and how to fix it, optional members."""

    def __init__(self, status: int, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


def response(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def not_found(what: str) -> Problem:
    """404 for what does not exist *and* for what belongs to another organisation or is
    not shared with the token's user: existence is never revealed."""
    return Problem(404, f"no {what}")


def install(app: FastAPI, gate: Callable[[Request], Awaitable[None]]) -> None:
    """The handlers; ``gate`` runs a route's token checks (raising Problem 401/403)
    before an invalid request is answered, so the token is judged first."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="gateway"'} if exc.status == 401 else None
        return response(exc.status, exc.detail, headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            await gate(request)
        except Problem as refused:
            return await _problem(request, refused)
        malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
        errors = [{"location": ".".join(str(p) for p in e.get("loc", ())), "error": e.get("msg", "")}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['location']}: {e['error']}" for e in errors) or "invalid request"
        return response(400 if malformed else 422, detail[:2000], errors=errors[:50])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        return response(exc.status_code, detail, dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # A bug of ours: logged with its traceback, answered without one.
        log.error("api_error", method=request.method, path=request.url.path, error=type(exc).__name__, exc_info=exc)
        return response(500, "internal error (logged); the request may be retried")
