"""Who may call which admin route: the admin API's one authentication check.

``/admin/*`` needs the operator token (never a tenant key), except the node routes, which
the fleet's own secrets open (see :mod:`crosslogic.fleet.credentials`): registering takes a
registration token, a node's heartbeat and deregistration take that node's credential, and
its drain either that credential or the operator token. A node's secret anywhere else, or
on another node, is a 403; the operator token is refused on the routes of nodes only, so it
never has to be given to one. Without ``ADMIN_TOKEN`` configured the operator routes stay
locked rather than open. Handlers read who called from ``request[PRINCIPAL]``.
"""

from __future__ import annotations

import enum
import hmac

from aiohttp import web

from crosslogic.admin import openapi
from crosslogic.admin.context import POOL, SETTINGS, actor_of
from crosslogic.admin.errors import Handler, error_response
from crosslogic.errors import NotFound
from crosslogic.extauthz.keys import bearer_token
from crosslogic.fleet import credentials, nodes, tokens
from crosslogic.fleet.errors import Forbidden
from crosslogic.openai_errors import ApiError

PRINCIPAL = "crosslogic.principal"  # request[PRINCIPAL]: the audit actor of the caller
SCOPE = "crosslogic.registration_scope"  # request[SCOPE]: the registration token's Scope


class Access(enum.Enum):
    REGISTRATION = "a registration token"
    NODE = "the node's own credential"
    NODE_OR_OPERATOR = "the node's own credential or the operator token"


# the routes a node calls (method, route pattern); every other /admin/* route is an
# operator's
NODE_ROUTES = {
    ("POST", "/admin/nodes/register"): Access.REGISTRATION,
    ("POST", "/admin/nodes/{node_id}/heartbeat"): Access.NODE,
    ("POST", "/admin/nodes/{node_id}/deregister"): Access.NODE,
    ("POST", "/admin/nodes/{node_id}/drain"): Access.NODE_OR_OPERATOR,
}


def _unauthorized(message: str, code: str) -> web.Response:
    return error_response(ApiError(401, message, "invalid_request_error", code))


def _is_operator(request: web.Request, sent: str | None) -> bool:
    token = request.app[SETTINGS].admin_token
    return bool(token) and sent is not None and hmac.compare_digest(sent.encode(), token.encode())


def _operator_refusal(request: web.Request, sent: str | None) -> web.Response | None:
    if _is_operator(request, sent):
        return None
    token = request.app[SETTINGS].admin_token
    if sent is not None and (
        credentials.is_node_credential(sent) or credentials.is_registration_token(sent)
    ):
        raise Forbidden(
            "A node's credential or registration token cannot call operator endpoints.",
            code="node_credential_not_allowed",
        )
    message = (
        "Missing or wrong operator token (ADMIN_TOKEN)."
        if token
        else "The admin API is locked: set ADMIN_TOKEN."
    )
    return _unauthorized(message, "invalid_admin_token")


async def _node_refusal(
    request: web.Request, access: Access, sent: str | None
) -> web.Response | None:
    operator = _is_operator(request, sent)
    if access is Access.NODE_OR_OPERATOR and operator:
        request[PRINCIPAL] = actor_of(request)
        return None
    if sent is None:
        code = (
            "invalid_registration_token"
            if access is Access.REGISTRATION
            else "invalid_node_credential"
        )
        return _unauthorized(f"This endpoint needs {access.value}.", code)
    if operator:
        raise Forbidden(
            "The operator token is not a node's credential: nodes register with a "
            "registration token and act with the credential registering returned.",
            code="operator_token_not_allowed",
        )
    async with request.app[POOL].acquire() as conn:
        if access is Access.REGISTRATION:
            scope = await tokens.scope_of(conn, sent)
            if scope is None:
                return _unauthorized(
                    "Unknown or revoked registration token.", "invalid_registration_token"
                )
            request[SCOPE] = scope
            request[PRINCIPAL] = f"node_token:{scope.name}"
            return None
        node_id = request.match_info["node_id"]
        exists, stored = await nodes.credential_hash(conn, node_id)
    if not exists:  # the control plane forgot the node: it should register again
        raise NotFound("node", node_id, message=f"Unknown node '{node_id}'; register again.")
    if stored is not None and hmac.compare_digest(stored, credentials.digest(sent)):
        request[PRINCIPAL] = f"node:{node_id}"
        return None
    if credentials.is_node_credential(sent):
        raise Forbidden(
            f"This credential is not the one of node '{node_id}': a node acts on itself only.",
            code="node_credential_not_allowed",
        )
    return _unauthorized(f"Wrong credential for node '{node_id}'.", "invalid_node_credential")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/admin/") and request.path != openapi.PATH:
        sent = bearer_token(request.headers.get("Authorization", ""))
        resource = request.match_info.route.resource
        route = (request.method, resource.canonical if resource is not None else "")
        access = NODE_ROUTES.get(route)
        if access is None:
            refusal = _operator_refusal(request, sent)
            request[PRINCIPAL] = actor_of(request)
        else:
            refusal = await _node_refusal(request, access, sent)
        if refusal is not None:
            return refusal
    return await handler(request)
