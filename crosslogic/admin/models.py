"""OpenAI's ``/v1/models``, for requests Envoy authorised: the models the key may use that
have healthy capacity where the key may be served.

A model counts as serving when one of its nodes is active (not draining) and heartbeated
within ``NODE_HEARTBEAT_TIMEOUT`` in a region the key is allowed (ext_authz names the key's
models and regions in headers). Retrieving a model that is in the catalog and allowed but
has no such node answers the 503 an inference request would get.
"""

from __future__ import annotations

from aiohttp import web

from crosslogic.admin.context import POOL, SETTINGS
from crosslogic.admin.errors import error_response
from crosslogic.contracts import routing
from crosslogic.errors import NotFound
from crosslogic.openai_errors import ApiError

routes = web.RouteTableDef()

_MODELS = """
SELECT m.name, extract(epoch FROM m.created_at)::bigint AS created,
       EXISTS (
           SELECT 1 FROM nodes n
           WHERE n.model_id = m.id AND n.status = 'active'
             AND n.last_heartbeat_at > now() - make_interval(secs => $1)
             AND ($2::text[] IS NULL OR n.region_code = ANY ($2::text[]))
       ) AS serving
FROM models m
WHERE m.status = 'active'
ORDER BY m.name
"""

NO_CAPACITY = ApiError(
    503,
    "No healthy node is serving this model right now (in the regions this key may use); "
    "retry shortly.",
    "service_unavailable",
    "no_healthy_upstream",
)


def _listed(header: str) -> set[str] | None:
    return None if header == "*" else {name for name in header.split(",") if name}


@routes.get("/v1/models")
@routes.get("/v1/models/{model:.+}")
async def list_models(request: web.Request) -> web.Response:
    """Envoy's ext_authz sets the allowed-models header on requests it authorised."""
    allowed = request.headers.get(routing.ALLOWED_MODELS_HEADER)
    if allowed is None:  # not through Envoy's ext_authz: refuse rather than leak the catalog
        return error_response(
            ApiError(401, "Unauthenticated.", "invalid_request_error", "invalid_api_key")
        )
    names = _listed(allowed)
    regions = _listed(request.headers.get(routing.ALLOWED_REGIONS_HEADER, "*"))
    rows = await request.app[POOL].fetch(
        _MODELS,
        request.app[SETTINGS].node_heartbeat_timeout,
        None if regions is None else sorted(regions),
    )
    allowed_rows = [r for r in rows if names is None or r["name"] in names]
    data = [
        {"id": r["name"], "object": "model", "created": r["created"], "owned_by": "crosslogic"}
        for r in allowed_rows
        if r["serving"]
    ]
    wanted = request.match_info.get("model")
    if wanted is None:
        return web.json_response({"object": "list", "data": data})
    match = [m for m in data if m["id"] == wanted]
    if match:
        return web.json_response(match[0])
    if any(r["name"] == wanted for r in allowed_rows):
        return error_response(NO_CAPACITY)
    raise NotFound("model", wanted, message=f"The model '{wanted}' does not exist.", param="model")
