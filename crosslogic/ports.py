"""Ports: free ones for a second system beside a first, and the checks made before starting."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

from crosslogic.settings import Settings, SettingsError


def free_ports(count: int, *, block: int = 1) -> list[int]:
    """``count`` different free ports. With ``block`` > 1 the first port is followed by
    ``block - 1`` free ones too (replicas on consecutive ports), which are not among the
    others."""
    return free_blocks([block] + [1] * (count - 1))


def free_blocks(sizes: list[int]) -> list[int]:
    """The first port of each of ``sizes`` blocks of consecutive free ports, no two sharing a
    port. The sockets stay bound until all are picked: one at a time, the kernel hands out
    the same port twice now and then (about 1 run in 500 for 8), and two gRPC services then
    share it silently (SO_REUSEPORT)."""
    with contextlib.ExitStack() as held:
        firsts = []
        for size in sizes:
            if size > 1:
                firsts.append(_free_block(held, size))  # below the ephemeral range
            else:
                sock = held.enter_context(socket.socket())
                sock.bind(("127.0.0.1", 0))  # in it: never inside a block
                firsts.append(int(sock.getsockname()[1]))
        return firsts


def _free_block(held: contextlib.ExitStack, size: int, *, attempts: int = 200) -> int:
    """The first of ``size`` consecutive free ports, all kept bound in ``held``. Taken
    below the kernel's ephemeral range: there, no outgoing connection takes one of them as
    its local port between this check and the server's bind (the kernel hands a bind to
    port 0 odd ports and a connect even ones, so the port after a free one is the likely
    victim)."""
    low = _ephemeral_low()
    for _ in range(attempts):
        base = random.randrange(max(1024, low - 16384), low - size)
        with contextlib.ExitStack() as trial:
            try:
                for port in range(base, base + size):
                    trial.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            held.enter_context(trial.pop_all())
            return base
    raise OSError(f"no {size} consecutive free ports found below {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    return free_ports(1)[0]


def with_free_ports(settings: Settings) -> Settings:
    """Every listening port moved to a free one: a second system beside a first (tests,
    the benchmark). The xDS replicas get consecutive ports from XDS_PORT on, the gateways
    from ENVOY_PORT and ENVOY_ADMIN_PORT on."""
    gateways = settings.gateways
    xds, envoy, envoy_admin, server, prometheus, extauthz, ratelimit, redis = free_blocks(
        [settings.xds_replicas, gateways, gateways, 1, 1, 1, 1, 1]
    )
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
