"""The admin API's one error edge: every answer that is not a success is an OpenAI error.

Handlers map what they expect (validation, not found, conflicts) themselves. This middleware,
the outermost, catches the rest: aiohttp's own plain-text errors (unknown route, wrong
method, body too large) become the JSON body every other refusal has, and an unexpected
exception becomes a 500 with that body and one log line (UnexpectedErrors), never aiohttp's
plain "500 Internal Server Error" with a traceback. A database that is down or restarting is
no bug: 503 with Retry-After, which clients (and nodes' heartbeats) retry.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
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
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


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
        except Unavailable as exc:  # Postgres restarting: worth a retry, not a bug
            log.warning("%s %s: database unavailable: %s", request.method, request.path, exc)
            return web.Response(
                status=UNAVAILABLE.status,
                body=UNAVAILABLE.body(),
                content_type="application/json",
                headers={"Retry-After": "1"},
            )
        except Exception as exc:
            unexpected.record(exc)
            return web.Response(
                status=INTERNAL.status, body=INTERNAL.body(), content_type="application/json"
            )

    return errors
