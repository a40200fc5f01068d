"""Starting a grpc.aio server that several processes can share (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc

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
    server: grpc.aio.Server, *, host: str, port: int, tasks: tuple[asyncio.Task[None], ...] = ()
) -> None:
    """Serve until SIGINT/SIGTERM, or until one of the process's background ``tasks`` ends:
    a dead background loop must take the process down with it, not leave it half alive."""
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    log.info("listening on %s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await server.stop(grace=2)
    for task in done:
        if task is not waiter:
            task.result()  # re-raises what killed it
            raise RuntimeError(f"background task {task.get_name()} ended unexpectedly")
