"""The control-plane services, named once: what runs each, which ports it holds, how many
processes it gets. ``crosslogic service NAME`` runs one; the stack starts them all.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from crosslogic.settings import Settings, to_env

if TYPE_CHECKING:  # the command line imports this module: keep its start quick
    from prometheus_client import CollectorRegistry

ServiceMain = Callable[[Settings, "CollectorRegistry"], Coroutine[Any, Any, None]]


def _ratelimit_processes(settings: Settings) -> int:
    # with RATELIMIT_AT=authz nobody calls the rate-limit service: not started
    if settings.ratelimit_at != "service":
        return 0
    return settings.workers(settings.ratelimit_workers)


@dataclass(frozen=True)
class Service:
    """One service: its ``module`` holds ``async def run(settings, registry)``; it listens on
    the ports named by ``port_settings`` (Settings attributes; their variables are the same
    names in capitals)."""

    name: str
    module: str
    port_settings: tuple[str, ...]
    # how many processes run it (copies of one gRPC service share its port)
    processes: Callable[[Settings], int] = lambda settings: 1
    # each process on a port of its own instead: the n-th (from 0) on the setting's port + n
    # (replicas a client lists one by one, as Envoy lists the xDS servers)
    port_each: bool = False
    # the settings of process n (from 0) where they differ from the stack's (a billing
    # process reads the access log of the n-th gateway)
    each: Callable[[Settings, int], Settings] | None = None

    def main(self) -> ServiceMain:
        """The service's ``run``, imported only now: a process imports its own service alone."""
        return cast(ServiceMain, importlib.import_module(self.module).run)

    def ports(self, settings: Settings) -> dict[str, int]:
        """Variable name -> port, for messages that name what the operator set (a replica's
        port as ``XDS_PORT+1``)."""
        first = {name.upper(): int(getattr(settings, name)) for name in self.port_settings}
        if not self.port_each:
            return first
        return {
            f"{name}+{n}" if n else name: port + n
            for name, port in first.items()
            for n in range(self.processes(settings))
        }

    def process_settings(self, settings: Settings, index: int) -> Settings:
        """The settings of process ``index`` (from 0)."""
        if self.port_each:
            settings = settings.with_overrides(
                **{name: int(getattr(settings, name)) + index for name in self.port_settings}
            )
        return self.each(settings, index) if self.each else settings

    def process_env(self, settings: Settings, index: int) -> dict[str, str]:
        """What process ``index`` (from 0) is given on top of the stack's environment."""
        stack = to_env(settings)
        own = to_env(self.process_settings(settings, index))
        return {name: value for name, value in own.items() if stack[name] != value}

    def argv(self) -> list[str]:
        """The command that runs one process of it."""
        return [sys.executable, "-m", "crosslogic", "service", self.name]


SERVICES = (
    Service(
        "admin",
        "crosslogic.admin.main",
        ("server_port", "prometheus_port"),
        processes=lambda settings: settings.admin_workers,
    ),
    Service(
        "xds",
        "crosslogic.xds.main",
        ("xds_port",),
        processes=lambda settings: settings.xds_replicas,
        port_each=True,
    ),
    Service(
        "extauthz",
        "crosslogic.extauthz.main",
        ("extauthz_port",),
        processes=lambda settings: settings.workers(settings.extauthz_workers),
    ),
    Service(
        "ratelimit",
        "crosslogic.ratelimit.main",
        ("ratelimit_port",),
        processes=_ratelimit_processes,
    ),
    # one billing process per gateway: each consumes its own gateway's access log
    Service(
        "billing",
        "crosslogic.billing.main",
        (),
        processes=lambda settings: settings.gateways,
        each=lambda settings, n: settings.gateway(n),
    ),
    # GPU pools on SkyPilot: only with ORCHESTRATOR=skypilot (never in the default `up`)
    Service(
        "orchestrator",
        "crosslogic.orchestrator.main",
        (),
        processes=lambda settings: 1 if settings.orchestrator == "skypilot" else 0,
    ),
)
NAMES = tuple(service.name for service in SERVICES)


def service(name: str) -> Service:
    return next(s for s in SERVICES if s.name == name)


def service_ports(settings: Settings) -> dict[str, int]:
    """Every port the services listen on, by variable name."""
    return {name: port for s in SERVICES for name, port in s.ports(settings).items()}
