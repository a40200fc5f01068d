"""Ports: free ones for a second system beside a first, and the checks made before starting."""

from __future__ import annotations

import contextlib
import socket

from crosslogic.settings import Settings, SettingsError


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


def refuse_busy_ports(wanted: dict[str, int]) -> None:
    """Each of ``wanted`` (variable name -> port) is ours alone and free, or SettingsError."""
    refuse_shared_ports(wanted)
    busy = [f"{name}={port}" for name, port in wanted.items() if port_in_use(port)]
    if busy:
        raise SettingsError(
            f"port(s) already in use: {', '.join(busy)}. Stop what listens there or set "
            "those variables to free ports."
        )
