"""A stand-in for the admin API's node routes, for the node agent's own tests: it records
every call and can refuse registrations, forget the node or remove it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeControlPlane:
    """Records admin API calls; can refuse registrations, forget the node or remove it."""

    refuse_registrations: int = 0
    forget_after_heartbeats: int | None = None
    remove_after_heartbeats: int | None = None
    registrations: int = 0
    calls: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    heartbeats: int = 0
    enough_heartbeats: int = 1
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/admin/nodes/register", self._register)
        app.router.add_post("/admin/nodes/{node_id}/{action}", self._node_action)
        return app

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.calls.append((request.path, body, request.headers.get("Authorization")))
        return dict(body)

    async def _register(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if self.refuse_registrations > 0:
            self.refuse_registrations -= 1
            return web.json_response({"error": "starting up"}, status=503)
        node_id = body["node_id"] or "assigned-1"
        self.registrations += 1
        return web.json_response(
            {
                "node_id": node_id,
                "node_credential": f"clnc_{self.registrations}",
                "heartbeat_interval_s": 0.01,
            }
        )

    async def _node_action(self, request: web.Request) -> web.Response:
        await self._record(request)
        if request.match_info["action"] == "heartbeat":
            self.heartbeats += 1
            if self.heartbeats >= self.enough_heartbeats:
                self.enough.set()
            if self.heartbeats == self.forget_after_heartbeats:
                return web.json_response({"error": "unknown node"}, status=404)
            if self.heartbeats == self.remove_after_heartbeats:
                self.enough.set()
                return web.json_response({"error": "removed"}, status=410)
        return web.json_response({})
