"""Usage reports: an operator's of any tenant (``/admin/usage/{tenant_id}``), and a
tenant's of itself with its own API key through Envoy (``/v1/usage``), both from the hourly
aggregates, as JSON or CSV (``format=csv`` or ``Accept: text/csv``)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from crosslogic.admin.context import READ_POOL
from crosslogic.admin.errors import error_response
from crosslogic.billing import reports
from crosslogic.contracts import routing
from crosslogic.openai_errors import ApiError

routes = web.RouteTableDef()


async def _report(request: web.Request, tenant_id: str) -> web.Response:
    query = reports.parse_report(
        request.query, now=datetime.now(UTC), accept=request.headers.get("Accept", "")
    )
    # from the hourly aggregates, themselves up to an aggregation interval behind: seconds
    # of replica lag add nothing that matters, and the reports' scans stay off the primary
    async with request.app[READ_POOL].acquire() as conn:
        report = await reports.tenant_report(conn, tenant_id=tenant_id, query=query)
    if query.format == "csv":
        return web.Response(text=reports.to_csv(report), content_type="text/csv")
    return web.json_response(report)


@routes.get("/admin/usage/{tenant_id}")
async def tenant_usage(request: web.Request) -> web.Response:
    return await _report(request, request.match_info["tenant_id"])


@routes.get("/v1/usage")
async def own_usage(request: web.Request) -> web.Response:
    """Envoy's ext_authz names the key's tenant in the tenant header (a client cannot send
    it: Envoy strips every internal header first); without it, nothing is told."""
    tenant_id = request.headers.get(routing.TENANT_HEADER)
    if tenant_id is None:
        return error_response(
            ApiError(401, "Unauthenticated.", "invalid_request_error", "invalid_api_key")
        )
    return await _report(request, tenant_id)
