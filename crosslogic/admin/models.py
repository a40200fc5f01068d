"""OpenAI's ``/v1/models``, for requests Envoy authorised: the catalog, as the key sees it."""

from __future__ import annotations

from aiohttp import web

from crosslogic.admin.context import POOL
from crosslogic.admin.errors import error_response
from crosslogic.contracts import routing
from crosslogic.errors import NotFound
from crosslogic.openai_errors import ApiError

routes = web.RouteTableDef()


@routes.get("/v1/models")
@routes.get("/v1/models/{model:.+}")
async def list_models(request: web.Request) -> web.Response:
    """Envoy's ext_authz sets the allowed-models header on requests it authorised."""
    allowed = request.headers.get(routing.ALLOWED_MODELS_HEADER)
    if allowed is None:  # not through Envoy's ext_authz: refuse rather than leak the catalog
        return error_response(
            ApiError(401, "Unauthenticated.", "invalid_request_error", "invalid_api_key")
        )
    rows = await request.app[POOL].fetch(
        "SELECT name, extract(epoch FROM created_at)::bigint AS created FROM models "
        "WHERE status = 'active' ORDER BY name"
    )
    names = None if allowed == "*" else set(allowed.split(","))
    data = [
        {"id": r["name"], "object": "model", "created": r["created"], "owned_by": "crosslogic"}
        for r in rows
        if names is None or r["name"] in names
    ]
    wanted = request.match_info.get("model")
    if wanted is None:
        return web.json_response({"object": "list", "data": data})
    match = [m for m in data if m["id"] == wanted]
    if not match:
        raise NotFound(
            "model", wanted, message=f"The model '{wanted}' does not exist.", param="model"
        )
    return web.json_response(match[0])
