"""A whole running system: embedded or external Postgres/Redis, the services, Envoy, nodes.

``crosslogic up``, the test fixtures and the benchmark all start the system through this one
class, so what the tests exercise is what an operator runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from crosslogic import demo, embedded, envoy_config
from crosslogic.db.connection import connect
from crosslogic.db.migrate import migrate
from crosslogic.demo import DEMO_MODEL, Demo
from crosslogic.metrics import MULTIPROC_ENV, prepare_multiproc_dir
from crosslogic.settings import Settings, SettingsError, to_env
from crosslogic.supervisor import Child, Supervisor

log = logging.getLogger(__name__)

SERVICES = ("admin", "xds", "extauthz", "ratelimit", "billing")


def free_ports(count: int) -> list[int]:
    """``count`` different free ports. The sockets stay bound until all are picked: one at a
    time, the kernel hands out the same port twice now and then (about 1 run in 500 for 8),
    and two gRPC services then share it silently (SO_REUSEPORT)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def with_free_ports(settings: Settings) -> Settings:
    """Every listening port moved to a free one: a second system beside a first (tests,
    the benchmark)."""
    server, prometheus, extauthz, ratelimit, xds, envoy, envoy_admin, redis = free_ports(8)
    return settings.with_overrides(
        server_port=server,
        prometheus_port=prometheus,
        extauthz_port=extauthz,
        ratelimit_port=ratelimit,
        xds_port=xds,
        envoy_port=envoy,
        envoy_admin_port=envoy_admin,
        # an external Redis keeps its port
        redis_port=redis if settings.redis_host is None else settings.redis_port,
    )


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def refuse_shared_ports(wanted: dict[str, int]) -> None:
    """gRPC servers bind a port another one holds without an error (SO_REUSEPORT), and each
    then gets part of the other's calls: refuse such a configuration before starting."""
    by_port: dict[int, list[str]] = {}
    for name, port in wanted.items():
        by_port.setdefault(port, []).append(name)
    shared = [f"{' = '.join(names)} = {port}" for port, names in by_port.items() if names[1:]]
    if shared:
        raise SettingsError(f"one port for two services: {'; '.join(shared)}")


def wait_until(
    what: str,
    probe: Callable[[], bool],
    *,
    timeout: float = 30.0,
    check: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str, *, headers: dict[str, str] | None = None) -> bool:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else "envoy"


class Stack:
    """Starts (``start``) and stops (``stop``) every process of the system."""

    def __init__(
        self,
        settings: Settings,
        *,
        nodes: int = 2,
        model: str = DEMO_MODEL,
        log_to_files: bool = True,
    ) -> None:
        if not settings.admin_token:  # the admin API is locked without one: make one up
            settings = settings.with_overrides(admin_token=secrets.token_urlsafe(24))
        self.settings = settings
        self.node_count = nodes
        self.model = model
        self.data_dir = settings.data_dir.resolve()
        self.supervisor = Supervisor(self.data_dir / "logs" if log_to_files else None)
        self.postgres: embedded.EmbeddedPostgres | None = None
        self.redis: Child | None = None
        self.postgres_child: Child | None = None
        self.nodes: list[Child] = []
        self.envoy: Child | None = None
        self.envoy_boot_id: str | None = None
        self.demo: Demo | None = None

    # -- addresses -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.envoy_port}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.server_port}"

    @property
    def envoy_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.envoy_admin_port}"

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(to_env(self.settings))
        env[MULTIPROC_ENV] = str(self.data_dir / "metrics")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_ports()
        if s.db_host is None:
            self.start_postgres()
            assert self.postgres is not None  # set by start_postgres
            env = self.postgres.env()
            self.settings = s = s.with_overrides(
                db_host=env["DB_HOST"],
                db_port=5432,
                db_user=env["DB_USER"],
                db_password="",
                db_name=env["DB_NAME"],
            )
        if s.redis_host is None:
            self.start_redis()
            self.settings = s = s.with_overrides(redis_host="127.0.0.1")
        s.access_log.parent.mkdir(parents=True, exist_ok=True)
        s.access_log.touch()
        self.demo = seeded = asyncio.run(self._prepare_database())
        self.start_services()
        self.start_envoy()
        for i in range(self.node_count):
            self.start_node(f"{self.model}-{i + 1}")
        self.wait_healthy_nodes(self.node_count)
        # what `up` prints must work once printed: the demo key through Envoy and ext_authz
        wait_until(
            "the demo key to be accepted through Envoy",
            lambda: http_ok(
                f"{self.base_url}/models", headers={"Authorization": f"Bearer {seeded.api_key}"}
            ),
            check=self.supervisor.check,
        )

    def start_postgres(self) -> None:
        """The embedded PostgreSQL, a supervised child like every other process (also used by
        tests that stop it mid-flight)."""
        if self.postgres is None:
            self.postgres = embedded.init_postgres(self.data_dir / "pg")
        pg = self.postgres
        self.postgres_child = self.supervisor.spawn(
            "postgres",
            pg.argv(),
            env=self.child_env(),
            user=pg.user,
            prepare=pg.wait_for_orphans,
            stop_signal=signal.SIGINT,  # "fast" shutdown: do not wait for clients to leave
        )
        wait_until(
            "PostgreSQL",
            lambda: postgres_ready(pg.socket_dir),
            check=self.supervisor.check,
        )

    def stop_postgres(self) -> None:
        """An outage: killed, and the supervisor does not bring it back."""
        if self.postgres_child is not None:
            self.postgres_child.proc.kill()
            self.supervisor.stop_child(self.postgres_child)
            self.postgres_child = None

    def start_redis(self) -> None:
        """The embedded redis-server (also used by tests that restart it mid-flight)."""
        port = self.settings.redis_port
        self.redis = self.supervisor.spawn(
            "redis",
            embedded.redis_argv(port, data_dir=self.data_dir / "redis"),
            env=self.child_env(),
        )
        wait_until("Redis", lambda: embedded.redis_ready(port), check=self.supervisor.check)

    def stop_redis(self) -> None:
        """An outage: killed, and the supervisor does not bring it back."""
        if self.redis is not None:
            self.redis.proc.kill()
            self.supervisor.stop_child(self.redis)
            self.redis = None

    def _service_ports(self) -> dict[str, int]:
        s = self.settings
        return {
            "SERVER_PORT": s.server_port,
            "PROMETHEUS_PORT": s.prometheus_port,
            "EXTAUTHZ_PORT": s.extauthz_port,
            "RATELIMIT_PORT": s.ratelimit_port,
            "XDS_PORT": s.xds_port,
        }

    def _check_ports(self) -> None:
        s = self.settings
        wanted = {
            **self._service_ports(),
            "ENVOY_PORT": s.envoy_port,
            "ENVOY_ADMIN_PORT": s.envoy_admin_port,
        }
        if s.redis_host is None:
            wanted["REDIS_PORT"] = s.redis_port
        refuse_shared_ports(wanted)
        busy = [f"{name}={port}" for name, port in wanted.items() if port_in_use(port)]
        if busy:
            raise SettingsError(
                f"port(s) already in use: {', '.join(busy)}. Stop what listens there or set "
                "those variables to free ports."
            )

    async def _prepare_database(self) -> Demo:
        conn = await connect(self.settings)
        try:
            await migrate(conn)
            return await demo.seed(conn, model=self.model)
        finally:
            await conn.close()

    def start_services(self) -> None:
        s = self.settings
        refuse_shared_ports(self._service_ports())  # `serve` starts here, without _check_ports
        prepare_multiproc_dir(self.data_dir / "metrics")
        env = self.child_env()
        counts = {
            "admin": 1,
            "xds": 1,
            "billing": 1,
            "extauthz": s.workers(s.extauthz_workers),
            # with RATELIMIT_AT=authz nobody calls the rate-limit service: not started
            "ratelimit": s.workers(s.ratelimit_workers) if s.ratelimit_at == "service" else 0,
        }
        for service in SERVICES:
            self.start_service(service, processes=counts[service], env=env)
        ports = [s.xds_port, s.extauthz_port]
        if counts["ratelimit"]:
            ports.append(s.ratelimit_port)
        for port in ports:
            wait_until(
                f"a service on port {port}",
                lambda p=port: port_in_use(p),  # type: ignore[misc]
                check=self.supervisor.check,
            )
        wait_until(
            "the admin API", lambda: http_ok(f"{self.admin_url}/ready"), check=self.supervisor.check
        )

    def start_service(
        self, service: str, *, processes: int, env: dict[str, str] | None = None
    ) -> list[Child]:
        """Start ``processes`` copies of one service (they share its port: SO_REUSEPORT)."""
        return [
            self.supervisor.spawn(
                f"{service}-{i + 1}",
                [sys.executable, "-m", "crosslogic", "service", service],
                env=env or self.child_env(),
            )
            for i in range(processes)
        ]

    def stop_service(self, service: str) -> int:
        """Stop every process of one service; returns how many there were."""
        children = [c for c in self.supervisor.children if c.name.startswith(f"{service}-")]
        for child in children:
            self.supervisor.stop_child(child)
        return len(children)

    def envoy_config_path(self) -> Path:
        return self.data_dir / "envoy.yaml"

    def render_envoy_config(self) -> None:
        """A fresh config, under a new boot id, for every Envoy process: run before each
        (re)start (the usage journal of a dead Envoy is told apart by it: see journal/)."""
        config = envoy_config.fresh_config(self.settings)
        self.envoy_config_path().write_text(config.text)
        self.envoy_boot_id = config.boot_id

    def start_envoy(self) -> None:
        s = self.settings
        concurrency = s.workers(s.envoy_concurrency)
        self.envoy = self.supervisor.spawn(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(self.envoy_config_path()),
                "--concurrency",
                str(concurrency),
                "--disable-hot-restart",
                # usage reaches billing in 0.5 s, not the 10 s default; what a killed Envoy
                # had not flushed is recovered from the admission journal
                "--file-flush-interval-msec",
                str(max(1, round(s.envoy_log_flush_interval * 1000))),
                "--log-level",
                "warning",
            ],
            env=self.child_env(),
            prepare=self.render_envoy_config,
        )
        wait_until(
            "Envoy", lambda: http_ok(f"{self.envoy_admin_url}/ready"), check=self.supervisor.check
        )

    def start_node(self, node_id: str, *, extra: tuple[str, ...] = ()) -> Child:
        child = self.supervisor.spawn(
            f"node-{node_id}",
            [
                sys.executable,
                "-m",
                "crosslogic",
                "node",
                "--port",
                "0",
                "--model",
                self.model,
                "--node-id",
                node_id,
                "--control-plane",
                self.admin_url,
                *extra,
            ],
            env=self.child_env(),
        )
        self.nodes.append(child)
        return child

    def healthy_nodes(self) -> int:
        stat = f"cluster.model_{self.model}.membership_healthy"
        url = f"{self.envoy_admin_url}/stats?format=json&filter=^{stat}$"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                stats = json.load(response).get("stats", [])
        except (urllib.error.URLError, OSError, ValueError):
            return -1
        return int(stats[0]["value"]) if stats else 0

    def wait_healthy_nodes(self, count: int, *, timeout: float = 30.0) -> None:
        wait_until(
            f"{count} healthy node(s) in Envoy",
            lambda: self.healthy_nodes() == count,
            timeout=timeout,
            check=self.supervisor.check,
        )

    def stop(self) -> None:
        # reverse start order: nodes and Envoy first, the databases last
        self.supervisor.stop_all()
        self.nodes.clear()
        self.envoy = self.redis = self.postgres_child = None


def postgres_ready(socket_dir: Path) -> bool:
    """The postmaster accepts connections (not merely started: recovery can take a moment)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(socket_dir / ".s.PGSQL.5432"))
        # its last line says "ready" once it accepts connections
        return "ready" in (socket_dir / "postmaster.pid").read_text(errors="replace")
    except OSError:
        return False
