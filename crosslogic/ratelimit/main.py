"""One rate-limit process: the limiter and Envoy's rate-limit gRPC API on a shared port."""

from __future__ import annotations

import logging

from envoy.service.ratelimit.v3 import rls_pb2_grpc
from prometheus_client import CollectorRegistry

from crosslogic.grpc_server import new_server, serve_until_signalled
from crosslogic.ratelimit.runtime import open_limiter
from crosslogic.ratelimit.service import RateLimitService
from crosslogic.settings import Settings
from crosslogic.unexpected import UnexpectedErrors


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    opened = await open_limiter(settings, registry)
    server = new_server()
    unexpected = UnexpectedErrors(
        edge="ratelimit", registry=registry, logger=logging.getLogger("crosslogic.ratelimit")
    )
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
        RateLimitService(opened.limiter, unexpected=unexpected), server
    )
    try:
        await serve_until_signalled(
            server, host=settings.server_host, port=settings.ratelimit_port, tasks=(opened.task,)
        )
    finally:
        await opened.close()
