"""The full system under test: a :class:`Stack` whose only node is the benchmark upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from crosslogic import audit
from crosslogic.accounts import api_keys
from crosslogic.accounts.requests import KeySpec
from crosslogic.db.connection import connect
from crosslogic.plan import plan
from crosslogic.ports import with_free_ports
from crosslogic.settings import Settings
from crosslogic.stack import Stack

log = logging.getLogger(__name__)

NODE_ID = "bench-upstream"
# evaluated on every request, never refusing one: the limiter's cost without its 429s
BENCH_KEY_RPM = 1_000_000_000
# Every layer limits requests and tokens, none ever refuses: the limiter's full cost (four
# layers x their windows in one script) without its 429s.
BENCH_LIMITS = """
INSERT INTO rate_limits (scope, subject, layer, requests_per_second, requests_per_minute,
                         tokens_per_minute, tokens_per_day)
VALUES ('global', '', 'global', 1000000000, NULL, 1000000000000, NULL),
       ('plan', 'default', 'tenant', NULL, 1000000000, 1000000000000, NULL),
       ('plan', 'default', 'environment', NULL, 1000000000, NULL, 1000000000000),
       ('plan', 'default', 'key', 1000000000, NULL, 1000000000000, NULL)
ON CONFLICT DO NOTHING
"""


def post_json(url: str, body: dict[str, Any], *, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        reply: dict[str, Any] = json.load(response)
    return reply


class Heartbeat(threading.Thread):
    """Registers a node with ``token`` (a registration token) and heartbeats it every
    second with the credential registering returned, registering again if forgotten."""

    def __init__(self, admin_url: str, *, token: str, registration: dict[str, Any]) -> None:
        super().__init__(name="bench-heartbeat", daemon=True)
        self.admin_url = admin_url
        self.token = token
        self.registration = registration
        self.credential = ""  # the node's own, from its registration
        self.stopping = threading.Event()

    def register(self) -> None:
        reply = post_json(
            f"{self.admin_url}/admin/nodes/register", self.registration, token=self.token
        )
        self.credential = str(reply["node_credential"])

    def beat(self) -> None:
        try:
            node = self.registration["node_id"]
            post_json(f"{self.admin_url}/admin/nodes/{node}/heartbeat", {}, token=self.credential)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            self.register()  # the registry declared the node dead: come back

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.beat()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


def bench_settings(data_dir: Path, *, envoy_concurrency: int, **overrides: Any) -> Settings:
    return with_free_ports(
        Settings(data_dir=data_dir, envoy_concurrency=envoy_concurrency, **overrides)
    )


class Gateway:
    """Starts the stack with no simulated node, registers ``upstream_port`` as the model's node
    and creates an API key with a limit that is never reached; ``stop`` undoes everything.
    ``overrides``: settings (RATELIMIT_AT, GATEWAYS, REDIS_CLUSTER, ...)."""

    def __init__(self, data_dir: Path, *, envoy_concurrency: int, **overrides: Any) -> None:
        settings = bench_settings(data_dir, envoy_concurrency=envoy_concurrency, **overrides)
        self.stack = Stack(plan(settings), nodes=0)
        self.heartbeat: Heartbeat | None = None
        self.api_key = ""
        self.api_key_id = ""

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        """Every gateway's chat completions URL (GATEWAYS of them)."""
        return [f"{g.base_url}/chat/completions" for g in self.stack.gateways]

    @property
    def metrics_url(self) -> str:
        return f"{self.stack.admin_url}/metrics"

    def start(self, *, upstream_port: int) -> None:
        self.stack.start()
        self.heartbeat = Heartbeat(
            self.stack.admin_url,
            token=self.stack.settings.node_registration_token,
            registration={
                "node_id": NODE_ID,
                "model": self.stack.model,
                "address": "127.0.0.1",
                "port": upstream_port,
            },
        )
        self.heartbeat.register()
        self.heartbeat.start()
        self.stack.wait_healthy_nodes(1)  # the benchmark upstream, in every Envoy
        self.api_key, self.api_key_id = asyncio.run(self._create_key())

    async def _create_key(self) -> tuple[str, str]:
        demo = self.stack.demo
        assert demo is not None  # set by Stack.start
        conn = await connect(self.stack.settings)
        try:
            async with conn.transaction():
                key = await api_keys.create(
                    conn,
                    actor=audit.SYSTEM,
                    environment_id=demo.environment_id,
                    spec=KeySpec(name="bench", rate_limit_rpm=BENCH_KEY_RPM),
                )
            await conn.execute(BENCH_LIMITS)
            await conn.execute("SELECT pg_notify('crosslogic_limits', 'bench')")
        finally:
            await conn.close()
        return key["key"], key["api_key_id"]

    async def _usage_records(self) -> tuple[int, int]:
        conn = await connect(self.stack.settings)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS rows, count(*) FILTER (WHERE prompt_tokens = 5 AND "
                "completion_tokens = 16) AS exact FROM usage_records WHERE api_key_id = $1",
                self.api_key_id,
            )
        finally:
            await conn.close()
        return int(row["rows"]), int(row["exact"])

    def ratelimit_failures(self) -> int:
        """Rate-limit calls Envoy gave up on (error or timeout) since it started. The filter
        fails open, so those requests passed without their limit being evaluated."""
        pattern = urllib.parse.quote(r"\.ratelimit\.error$")
        total = 0
        for gateway in self.stack.gateways:
            url = f"{gateway.admin_url}/stats?format=json&filter={pattern}"
            with urllib.request.urlopen(url, timeout=5) as response:
                stats = json.load(response).get("stats", [])
            total += sum(int(s.get("value", 0)) for s in stats)
        return total

    def wait_for_billing(self, expected: int, *, timeout: float = 20.0) -> tuple[int, int]:
        """The bench key's usage_records count, and how many of them carry the upstream's
        token counts (5 + 16), once the count reached ``expected`` and stopped growing for
        2 s (requests in flight when wrk stopped are billed too), or when time is up."""
        deadline = time.monotonic() + timeout
        last, stable_since = -1, time.monotonic()
        while True:
            rows, exact = asyncio.run(self._usage_records())
            now = time.monotonic()
            if rows != last:
                last, stable_since = rows, now
            # the access log is flushed every 0.5 s and billing polls it every 0.25 s
            if (rows >= expected and now - stable_since >= 2.0) or now > deadline:
                return rows, exact
            time.sleep(0.25)

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        self.stack.stop()
