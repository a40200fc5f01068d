"""A local stand-in for the clouds' instance metadata endpoints (AWS IMDSv2, GCP's metadata
server, Azure IMDS Scheduled Events), in their documented shapes and with the headers they
require, for the node agent's tests. Nothing is announced until the test POSTs
``/_test/interrupt``; ``GET /_test/calls`` lists what the stub answered."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

AZURE_VM = "vm-gpu-0"


@dataclass
class MetadataStub:
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    rebalance: asyncio.Event = field(default_factory=asyncio.Event)  # AWS' early signal
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # ends held long polls
    tokens: set[str] = field(default_factory=set)
    calls: list[dict[str, Any]] = field(default_factory=list)
    approved: list[str] = field(default_factory=list)
    azure_event_id: str = field(default_factory=lambda: f"evt-{secrets.token_hex(4)}")

    def app(self) -> web.Application:
        app = web.Application()

        async def shutting_down(_: web.Application) -> None:
            self.closing.set()

        app.on_shutdown.append(shutting_down)
        app.router.add_put("/latest/api/token", self._aws_token)
        app.router.add_get("/latest/meta-data/spot/instance-action", self._aws_action)
        app.router.add_get(
            "/latest/meta-data/events/recommendations/rebalance", self._aws_rebalance
        )
        app.router.add_get("/computeMetadata/v1/instance/preempted", self._gcp_preempted)
        app.router.add_get("/metadata/instance/compute/name", self._azure_name)
        app.router.add_get("/metadata/scheduledevents", self._azure_events)
        app.router.add_post("/metadata/scheduledevents", self._azure_approve)
        app.router.add_post("/_test/interrupt", self._interrupt)
        app.router.add_post("/_test/rebalance", self._recommend)
        app.router.add_get("/_test/calls", self._calls)
        return app

    def _record(self, request: web.Request, status: int) -> None:
        self.calls.append({"method": request.method, "path": request.path, "status": status})

    def _reply(self, request: web.Request, status: int, **kwargs: Any) -> web.Response:
        self._record(request, status)
        return web.Response(status=status, **kwargs)

    async def _interrupt(self, request: web.Request) -> web.Response:
        self.interrupted.set()
        return web.json_response({"interrupted": True})

    async def _recommend(self, request: web.Request) -> web.Response:
        self.rebalance.set()
        return web.json_response({"rebalance": True})

    async def _calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": self.calls, "approved": self.approved})

    # --- AWS IMDSv2 -------------------------------------------------------------------------

    async def _aws_token(self, request: web.Request) -> web.Response:
        ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self._reply(request, 400, text="missing or invalid TTL")
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return self._reply(request, 200, text=token)

    async def _aws_action(self, request: web.Request) -> web.Response:
        if request.headers.get("X-aws-ec2-metadata-token") not in self.tokens:
            return self._reply(request, 401, text="")
        if not self.interrupted.is_set():
            return self._reply(request, 404, text="<html>Not Found</html>")
        body = {"action": "terminate", "time": "2026-11-30T05:00:00Z"}
        return self._reply(request, 200, text=json.dumps(body), content_type="text/plain")

    async def _aws_rebalance(self, request: web.Request) -> web.Response:
        if request.headers.get("X-aws-ec2-metadata-token") not in self.tokens:
            return self._reply(request, 401, text="")
        if not self.rebalance.is_set():
            return self._reply(request, 404, text="<html>Not Found</html>")
        body = {"noticeTime": "2026-11-30T04:58:00Z"}
        return self._reply(request, 200, text=json.dumps(body), content_type="text/plain")

    # --- GCP --------------------------------------------------------------------------------

    def _gcp_value(self) -> tuple[str, str]:
        value = "TRUE" if self.interrupted.is_set() else "FALSE"
        return value, hashlib.sha256(value.encode()).hexdigest()[:16]

    async def _gcp_preempted(self, request: web.Request) -> web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return self._reply(request, 403, text="Missing Metadata-Flavor:Google header.")
        value, etag = self._gcp_value()
        if request.query.get("wait_for_change") == "true" and (
            request.query.get("last_etag") in (None, etag)
        ):
            timeout = float(request.query.get("timeout_sec", "300"))
            waits = [asyncio.ensure_future(e.wait()) for e in (self.interrupted, self.closing)]
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
            value, etag = self._gcp_value()
        return self._reply(
            request, 200, text=value, content_type="application/text", headers={"ETag": etag}
        )

    # --- Azure ------------------------------------------------------------------------------

    def _azure_refusal(self, request: web.Request, api_version: str) -> web.Response | None:
        if request.headers.get("Metadata") != "true":
            return self._reply(request, 400, text='{"error": "Bad request. Metadata header"}')
        if request.query.get("api-version") != api_version:
            return self._reply(request, 400, text='{"error": "Bad request. api-version"}')
        return None

    async def _azure_name(self, request: web.Request) -> web.Response:
        refused = self._azure_refusal(request, "2021-02-01")
        if refused is not None:
            return refused
        return self._reply(request, 200, text=AZURE_VM)

    def _azure_document(self) -> dict[str, Any]:
        def event(event_id: str, kind: str, vm: str) -> dict[str, Any]:
            return {
                "EventId": event_id,
                "EventStatus": "Scheduled",
                "EventType": kind,
                "ResourceType": "VirtualMachine",
                "Resources": [vm],
                "NotBefore": "Mon, 30 Nov 2026 05:00:00 GMT",
                "Description": "",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            }

        # always there: a freeze of this VM and another VM's eviction, neither a notice
        events = [event("evt-freeze", "Freeze", AZURE_VM), event("evt-other", "Preempt", "vm-9")]
        if self.interrupted.is_set():
            events.append(event(self.azure_event_id, "Preempt", AZURE_VM))
        return {"DocumentIncarnation": len(events), "Events": events}

    async def _azure_events(self, request: web.Request) -> web.Response:
        refused = self._azure_refusal(request, "2020-07-01")
        if refused is not None:
            return refused
        document = json.dumps(self._azure_document())
        return self._reply(request, 200, text=document, content_type="application/json")

    async def _azure_approve(self, request: web.Request) -> web.Response:
        refused = self._azure_refusal(request, "2020-07-01")
        if refused is not None:
            return refused
        body = await request.json()
        self.approved.extend(r["EventId"] for r in body["StartRequests"])
        return self._reply(request, 200, text="")
