"""A whole running system: embedded or external Postgres/Redis, the services, Envoy, nodes.

``crosslogic up``, the test fixtures and the benchmark all start the system through this one
class, so what the tests exercise is what an operator runs. What it runs is decided before
(:mod:`crosslogic.plan`); how it waits is :mod:`crosslogic.probes`; each process is a child
of a :class:`~crosslogic.supervisor.Supervisor`.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

from crosslogic import embedded, envoy_config, processes
from crosslogic.demo import DEMO_MODEL, Demo
from crosslogic.metrics import prepare_multiproc_dir
from crosslogic.plan import Plan
from crosslogic.ports import port_in_use, refuse_busy_ports, refuse_shared_ports
from crosslogic.probes import healthy_nodes, http_ok, wait_until
from crosslogic.seeding import migrate_and_seed
from crosslogic.services import SERVICES, service, service_ports
from crosslogic.settings import Settings
from crosslogic.supervisor import Child, Supervisor
from crosslogic.tls import ca as tls_ca
from crosslogic.tls import listener


@dataclass
class Gateway:
    """One Envoy of the stack (GATEWAYS of them), under its own settings (Settings.gateway):
    its port, admin port, access log and GATEWAY_ID; a billing process reads its log."""

    settings: Settings
    config: Path
    child: Child | None = None
    boot_id: str | None = None  # of the running Envoy process: a new one at each (re)start

    @property
    def base_url(self) -> str:
        scheme = "https" if self.settings.listener_tls == "on" else "http"
        return f"{scheme}://127.0.0.1:{self.settings.envoy_port}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.envoy_admin_port}"

    def render_config(self) -> None:
        """A fresh config, under a new boot id, for the gateway's next Envoy process (the
        usage journal of a dead Envoy is told apart by it: see journal/)."""
        sds = self.config.with_name(f"{self.config.stem}-listener-sds.json")
        envoy_config.write_listener_sds(self.settings, sds)
        config = envoy_config.fresh_config(self.settings, listener_sds=sds)
        self.config.write_text(config.text)
        self.boot_id = config.boot_id


class Stack:
    """Starts (``start``) and stops (``stop``) every process of the system, each given the
    plan's settings."""

    def __init__(
        self,
        plan: Plan,
        *,
        nodes: int = 2,
        model: str = DEMO_MODEL,
        log_to_files: bool = True,
    ) -> None:
        self.plan = plan
        self.settings = plan.settings
        self.node_count = nodes
        self.model = model
        self.data_dir = plan.settings.data_dir.resolve()
        self.supervisor = Supervisor(self.data_dir / "logs" if log_to_files else None)
        self.postgres: embedded.EmbeddedPostgres | None = None
        self.redis: Child | None = None
        self.postgres_child: Child | None = None
        self.nodes: list[Child] = []
        self.gateways = [
            Gateway(
                plan.settings.gateway(n),
                config=self.data_dir / ("envoy.yaml" if n == 0 else f"envoy-{n + 1}.yaml"),
            )
            for n in range(plan.settings.gateways)
        ]
        self.demo: Demo | None = None
        # the CA file a client trusts the listener's certificate with, when `up` issued it
        self.listener_ca: Path | None = None

    # -- addresses (of the first gateway; the others: ``stack.gateways``) ------------------
    @property
    def base_url(self) -> str:
        return self.gateways[0].base_url

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.server_port}"

    @property
    def envoy_admin_url(self) -> str:
        return self.gateways[0].admin_url

    @property
    def envoy(self) -> Child | None:
        return self.gateways[0].child

    @property
    def envoy_boot_id(self) -> str | None:
        return self.gateways[0].boot_id

    def child_env(self) -> dict[str, str]:
        return processes.child_env(self.settings, metrics_dir=self.data_dir / "metrics")

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        refuse_busy_ports(self.plan.ports())
        # the CA before any process that issues from it (xDS replicas, the listener)
        tls_ca.load_or_create(listener.ca_dir(self.settings))
        if self.plan.issue_listener_cert:
            self.listener_ca = listener.issue_local(self.settings)
        if self.plan.embedded_postgres:
            self.start_postgres()
        if self.plan.embedded_redis:
            self.start_redis()
        for gateway in self.gateways:
            gateway.settings.access_log.parent.mkdir(parents=True, exist_ok=True)
            gateway.settings.access_log.touch()
        self.demo = seeded = asyncio.run(migrate_and_seed(self.settings, model=self.model))
        self.start_services()
        self.start_envoy()
        for i in range(self.node_count):
            self.start_node(f"{self.model}-{i + 1}")
        self.wait_healthy_nodes(self.node_count)
        # what `up` prints must work once printed: the demo key through Envoy and ext_authz
        wait_until(
            "the demo key to be accepted through Envoy",
            lambda: http_ok(
                f"{self.base_url}/models",
                headers={"Authorization": f"Bearer {seeded.api_key}"},
                cafile=self.listener_ca,
            ),
            check=self.supervisor.check,
        )

    def start_postgres(self) -> None:
        """The embedded PostgreSQL, a supervised child like every other process."""
        if self.postgres is None:
            self.postgres = embedded.init_postgres(self.data_dir)
        pg = self.postgres
        self.postgres_child = self.supervisor.spawn(
            "postgres",
            pg.argv(),
            env=self.child_env(),
            user=pg.user,
            prepare=pg.wait_for_orphans,
            stop_signal=signal.SIGINT,  # "fast" shutdown: do not wait for clients to leave
        )
        wait_until("PostgreSQL", lambda: embedded.postgres_ready(pg), check=self.supervisor.check)

    def start_redis(self) -> None:
        """The embedded redis-server."""
        port = self.settings.redis_port
        self.redis = self.supervisor.spawn(
            "redis",
            embedded.redis_argv(port, data_dir=self.data_dir / "redis"),
            env=self.child_env(),
        )
        wait_until("Redis", lambda: embedded.redis_ready(port), check=self.supervisor.check)

    def start_services(self, *, without: frozenset[str] = frozenset()) -> None:
        """Every service but those named in ``without``, each with as many processes as the
        settings give it."""
        refuse_shared_ports(service_ports(self.settings))  # `serve` starts here
        prepare_multiproc_dir(self.data_dir / "metrics")
        env = self.child_env()
        listening: list[int] = []
        for each in SERVICES:
            if each.name not in without and self.start_service(
                each.name, env=env
            ):  # none with RATELIMIT_AT=authz
                listening.extend(each.ports(self.settings).values())
        for port in listening:
            wait_until(
                f"a service on port {port}",
                lambda p=port: port_in_use(p),  # type: ignore[misc]
                check=self.supervisor.check,
            )
        if "admin" not in without:
            wait_until(
                "the admin API",
                lambda: http_ok(f"{self.admin_url}/ready"),
                check=self.supervisor.check,
            )

    def start_service(
        self, name: str, *, processes: int | None = None, env: dict[str, str] | None = None
    ) -> list[Child]:
        """Start ``processes`` copies of one service (None: as many as the settings give it;
        they share its port, SO_REUSEPORT, or each has its own: xDS replicas)."""
        started = service(name)
        count = started.processes(self.settings) if processes is None else processes
        base = env or self.child_env()
        return [
            self.supervisor.spawn(
                f"{name}-{i + 1}",
                started.argv(),
                env={**base, **started.process_env(self.settings, i)},
            )
            for i in range(count)
        ]

    def start_envoy(self) -> None:
        """Every gateway's Envoy, each (re)started on a fresh config."""
        for gateway in self.gateways:
            self.start_gateway(gateway)

    def start_gateway(self, gateway: Gateway) -> None:
        name = "envoy" if gateway is self.gateways[0] else f"envoy-{gateway.settings.gateway_id}"
        gateway.child = self.supervisor.spawn(
            name,
            processes.envoy_argv(gateway.settings, config=gateway.config),
            env=self.child_env(),
            prepare=gateway.render_config,
        )
        wait_until(
            f"Envoy of {gateway.settings.gateway_id}",
            lambda: http_ok(f"{gateway.admin_url}/ready"),
            check=self.supervisor.check,
        )

    def start_node(self, node_id: str, *, extra: tuple[str, ...] = ()) -> Child:
        """One more simulated node of the stack's model; ``extra``: `crosslogic node` options."""
        argv = processes.node_argv(
            node_id=node_id, model=self.model, control_plane=self.admin_url, extra=extra
        )
        env = processes.node_env(self.settings, metrics_dir=self.data_dir / "metrics")
        child = self.supervisor.spawn(f"node-{node_id}", argv, env=env)
        self.nodes.append(child)
        return child

    def wait_healthy_nodes(self, count: int, *, timeout: float = 30.0) -> None:
        """Until every gateway's Envoy routes to ``count`` healthy nodes."""
        wait_until(
            f"{count} healthy node(s) in every Envoy",
            lambda: all(healthy_nodes(g.admin_url, self.model) == count for g in self.gateways),
            timeout=timeout,
            check=self.supervisor.check,
        )

    def stop(self) -> None:
        # reverse start order: nodes and Envoy first, the databases last
        self.supervisor.stop_all()
        self.nodes.clear()
        for gateway in self.gateways:
            gateway.child = None
        self.redis = self.postgres_child = None
