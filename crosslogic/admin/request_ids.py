"""Every admin API call has a request id: the caller's ``X-Request-Id`` when it is a sensible
one (a load balancer's, a client's), else a new one. It is returned in the answer's
``X-Request-Id`` header, refusals included, and every log line written while the call is
handled carries it (crosslogic.logs), so a caller's report leads to the server's lines.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from crosslogic.logs import REQUEST_ID

HEADER = "X-Request-Id"
# what a caller's id may be: printable, no spaces, short enough for a log line
_USABLE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_of(request: web.Request) -> str:
    """The caller's id if it is usable, else a new one (never an error: it is only a label)."""
    given = request.headers.get(HEADER, "")
    return given if _USABLE.fullmatch(given) else uuid.uuid4().hex


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware: it sees every answer, the error middleware's too."""
    request_id = request_id_of(request)
    token = REQUEST_ID.set(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # aiohttp's own answers (a redirect, say) are raised
        exc.headers[HEADER] = request_id
        raise
    finally:
        REQUEST_ID.reset(token)
    response.headers[HEADER] = request_id
    return response
