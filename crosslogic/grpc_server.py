"""Starting a grpc.aio server that several processes can share (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from crosslogic.lifecycle import run_until_signalled

log = logging.getLogger(__name__)

# The kernel spreads Envoy's HTTP/2 connections over every process bound to the port.
_OPTIONS = [
    ("grpc.so_reuseport", 1),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
]


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(options=_OPTIONS)


async def serve_until_signalled(
    server: grpc.aio.Server, *, host: str, port: int, tasks: tuple[asyncio.Task[Any], ...] = ()
) -> None:
    """Serve until SIGINT/SIGTERM, or until one of the process's main ``tasks`` ends
    (:func:`~crosslogic.lifecycle.run_until_signalled`: that raises TaskDied)."""
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    log.info("listening on %s:%d", host, port)
    try:
        await run_until_signalled(tasks)
    finally:
        await server.stop(grace=2)
