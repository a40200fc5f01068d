"""One rate-limit process: Redis client, gRPC server on a shared port."""

from __future__ import annotations

from envoy.service.ratelimit.v3 import rls_pb2_grpc
from prometheus_client import CollectorRegistry

from crosslogic.grpc_server import new_server, serve_until_signalled
from crosslogic.ratelimit.resp import PipelinedRedis
from crosslogic.ratelimit.service import RateLimitMetrics, RateLimitService
from crosslogic.ratelimit.store import RedisCounters
from crosslogic.settings import Settings

# Well below Envoy's call timeout: a Redis outage costs at most this, and is counted.
REDIS_TIMEOUT_S = 0.03


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    client = PipelinedRedis(
        settings.redis_host or "127.0.0.1",
        settings.redis_port,
        password=settings.redis_password,
        timeout=REDIS_TIMEOUT_S,
    )
    service = RateLimitService(
        counters=RedisCounters(client),
        metrics=RateLimitMetrics(registry),
        default_rpm=settings.default_key_rpm,
    )
    server = new_server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
    try:
        await serve_until_signalled(server, host=settings.server_host, port=settings.ratelimit_port)
    finally:
        client.close()
