"""A local stand-in for Stripe's meter events endpoint, for the real ``stripe`` library.

It binds a free port in a thread, records every request it receives (headers and form
fields, as the library really sent them), answers like Stripe (a ``billing.meter_event``,
the stored answer again for a repeated Idempotency-Key), and can be told to fail the next
requests: ``"500"``/``"503"`` (an error body) or ``"reset"`` (the connection reset, no
answer), or ``"400"`` (a refusal).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

PATH = "/v1/billing/meter_events"


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
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency key -> body
    accepted: dict[str, dict[str, str]] = field(default_factory=dict)  # identifier -> form
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, *modes: str) -> None:
        with self.lock:
            self.failures.extend(modes)

    def events(self) -> list[dict[str, str]]:
        """The meter events Stripe holds: one per identifier, however often it was sent."""
        with self.lock:
            return list(self.accepted.values())

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
                mode = double.failures.pop(0) if double.failures else ""
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
                    answer = {
                        "object": "billing.meter_event",
                        "created": int(form.get("timestamp", "0")),
                        "event_name": form.get("event_name"),
                        "identifier": form.get("identifier"),
                        "livemode": False,
                        "payload": {
                            k[len("payload[") : -1]: v
                            for k, v in form.items()
                            if k.startswith("payload[")
                        },
                        "timestamp": int(form.get("timestamp", "0")),
                    }
                    double.answers[key] = answer
                    double.accepted.setdefault(str(form.get("identifier")), form)
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
