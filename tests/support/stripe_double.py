"""A local stand-in for Stripe's meter events and invoice items endpoints, for the real
``stripe`` library.

It binds a free port in a thread, records every request it receives (headers and form
fields, as the library really sent them), answers like Stripe (a ``billing.meter_event`` or
an ``invoiceitem``, the stored answer again for a repeated Idempotency-Key), and can be told
to fail the next
requests: ``"500"``/``"503"`` (an error body) or ``"reset"`` (the connection reset, no
answer), or ``"400"`` (a refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from prometheus_client import CollectorRegistry

from crosslogic.billing.exporter import ExportMetrics, ExportResult, StripeExporter
from crosslogic.billing.stripe_export import MeterNames
from crosslogic.billing.stripe_meter import StripeMeterEvents
from crosslogic.db.connection import connect
from crosslogic.stack import Stack

PATH = "/v1/billing/meter_events"
INVOICE_ITEMS = "/v1/invoiceitems"


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    form: dict[str, str]

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class StripeDouble:
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # consumed one per request
    failing_path: str | None = None  # None: failures apply to requests to any path
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency key -> body
    accepted: dict[str, dict[str, str]] = field(default_factory=dict)  # identifier -> form
    items: dict[str, dict[str, str]] = field(default_factory=dict)  # idempotency key -> form
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, *modes: str, path: str | None = None) -> None:
        """Fail the next requests (to ``path`` only, if given) one mode each."""
        with self.lock:
            self.failures.extend(modes)
            self.failing_path = path

    def events(self) -> list[dict[str, str]]:
        """The meter events Stripe holds: one per identifier, however often it was sent."""
        with self.lock:
            return list(self.accepted.values())

    def invoice_items(self) -> list[dict[str, str]]:
        """The invoice items Stripe holds: one per Idempotency-Key, however often sent."""
        with self.lock:
            return list(self.items.values())

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.failures.clear()


def _handler(double: StripeDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            received = Received(
                method="POST",
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                form=dict(parse_qsl(body, keep_blank_values=True)),
            )
            with double.lock:
                double.requests.append(received)
                failing = double.failing_path in (None, self.path)
                mode = double.failures.pop(0) if double.failures and failing else ""
            if mode == "reset":
                # SO_LINGER 0: close() sends a RST, the client sees a reset connection
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()
                return
            if mode:
                kind = "invalid_request_error" if mode.startswith("4") else "api_error"
                self._reply(int(mode), {"error": {"type": kind, "message": f"double: {mode}"}})
                return
            self._accept(received)

        def _accept(self, received: Received) -> None:
            key = received.idempotency_key or ""
            form = received.form
            with double.lock:
                answer = double.answers.get(key)
                if answer is None:
                    if received.path == INVOICE_ITEMS:
                        answer = _invoice_item(form, len(double.items))
                        double.items[key] = form
                    else:
                        answer = _meter_event(form)
                        double.accepted.setdefault(str(form.get("identifier")), form)
                    double.answers[key] = answer
            self._reply(200, answer)

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def finish(self) -> None:
            with contextlib.suppress(OSError, ValueError):  # the connection reset above
                super().finish()

    return Handler


def _meter_event(form: dict[str, str]) -> dict[str, Any]:
    return {
        "object": "billing.meter_event",
        "created": int(form.get("timestamp", "0")),
        "event_name": form.get("event_name"),
        "identifier": form.get("identifier"),
        "livemode": False,
        "payload": {
            k[len("payload[") : -1]: v for k, v in form.items() if k.startswith("payload[")
        },
        "timestamp": int(form.get("timestamp", "0")),
    }


def _invoice_item(form: dict[str, str], number: int) -> dict[str, Any]:
    return {
        "object": "invoiceitem",
        "id": f"ii_double_{number}",
        "customer": form.get("customer"),
        "amount": int(form.get("amount", "0")),
        "currency": form.get("currency"),
        "description": form.get("description"),
        "livemode": False,
    }


@contextmanager
def stripe_double() -> Iterator[StripeDouble]:
    double = StripeDouble()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(double))
    server.daemon_threads = True
    double.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="stripe-double", daemon=True)
    thread.start()
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_export(
    stack: Stack,
    double: StripeDouble,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    registry: CollectorRegistry | None = None,
) -> ExportResult | None:
    """One export run of the stack's database to ``double`` (the library's own retries off)."""

    async def go() -> ExportResult | None:
        @asynccontextmanager
        async def fresh() -> AsyncIterator[asyncpg.Connection]:
            conn = await connect(stack.settings)
            try:
                yield conn
            finally:
                await conn.close()

        events = StripeMeterEvents("sk_test", api_base=double.url, max_network_retries=0)
        metrics = ExportMetrics(registry or CollectorRegistry())
        try:
            exporter = StripeExporter(fresh, events, metrics, names=MeterNames(), now=now)
            return await exporter.export_once()
        finally:
            await events.close()

    return asyncio.run(go())
