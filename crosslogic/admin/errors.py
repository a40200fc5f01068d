"""The admin API's one error edge: every answer that is not a success is an OpenAI error.

Handlers and the operations they call raise :mod:`crosslogic.errors`; this middleware, the
outermost, maps them to an HTTP status and OpenAI's error body in one place: Invalid 400,
NotFound 404, Conflict 409, the fleet's Forbidden 403 and NodeRemoved 410, Unavailable 503
with Retry-After (a database that is down or restarting is no bug: clients, and nodes'
heartbeats, retry). aiohttp's own plain-text errors
(unknown route, wrong method, body too large) get the same JSON body. Anything else is a
bug: a 500 with that body and one log line (UnexpectedErrors), never aiohttp's plain
"500 Internal Server Error" with a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Conflict, DomainError, Invalid, NotFound, Unavailable
from crosslogic.fleet.errors import Forbidden, NodeRemoved
from crosslogic.openai_errors import ApiError
from crosslogic.unexpected import UnexpectedErrors

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INTERNAL = ApiError(500, "Internal error; it has been logged.", "server_error", "internal_error")
UNAVAILABLE = ApiError(
    503,
    "The database is temporarily unavailable; retry shortly.",
    "service_unavailable",
    "database_unavailable",
)
# a refusal's HTTP status, by the most specific class that matches
STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (Invalid, 400),
    (NotFound, 404),
    (Conflict, 409),
    (Forbidden, 403),
    (NodeRemoved, 410),
)
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def error_response(error: ApiError, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=error.status, body=error.body(), content_type="application/json", headers=headers
    )


def api_error(exc: DomainError) -> ApiError | None:
    """The client's view of a refusal; None for a DomainError this edge has no status for."""
    if isinstance(exc, Unavailable):
        if exc.dependency == "PostgreSQL":
            return UNAVAILABLE
        return ApiError(503, exc.message, "service_unavailable", exc.code)
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return ApiError(status, exc.message, "invalid_request_error", exc.code, exc.param)
    return None


def _as_json(exc: web.HTTPException) -> web.HTTPException:
    if exc.content_type == "application/json" or exc.status < 400:
        return exc  # already ours, or a redirect
    error = ApiError(
        exc.status,
        exc.reason,
        "server_error" if exc.status >= 500 else "invalid_request_error",
        _CODES.get(exc.status, "invalid_request"),
    )
    exc.body = error.body()
    exc.content_type = "application/json"
    return exc


def error_middleware(unexpected: UnexpectedErrors) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            # handlers query the pool directly: their driver errors are translated here
            with postgres_errors():
                return await handler(request)
        except web.HTTPException as exc:
            raise _as_json(exc) from None
        except DomainError as exc:
            error = api_error(exc)
            if error is None:
                unexpected.record(exc)
                return error_response(INTERNAL)
            if error.status == 503:  # a dependency restarting: worth a retry, not a bug
                log.warning("%s %s: unavailable: %s", request.method, request.path, exc)
                return error_response(error, headers={"Retry-After": "1"})
            return error_response(error)
        except Exception as exc:
            unexpected.record(exc)
            return error_response(INTERNAL)

    return errors
