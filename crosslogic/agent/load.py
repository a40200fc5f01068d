"""The load a heartbeat reports, read from vLLM's own Prometheus ``/metrics``.

vLLM labels every engine series with ``model_name`` (and ``engine`` with data parallelism):
running and waiting requests are summed over the label sets, KV-cache use is the fullest
engine's. Releases before 0.9 call the KV-cache gauge ``vllm:gpu_cache_usage_perc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """The load figures a heartbeat reports."""

    requests_running: int
    requests_waiting: int
    kv_cache_usage_perc: float


class LoadUnavailable(Exception):
    """vLLM's /metrics did not answer with the figures a heartbeat needs (vLLM is starting,
    or gone): the node is not heartbeated meanwhile, so the control plane stops routing to
    it once its heartbeat times out."""


def parse_vllm_metrics(text: str) -> NodeLoad:
    """The load in a Prometheus text exposition from vLLM; LoadUnavailable if the running
    or waiting gauge is missing or a figure is not a finite number."""
    samples: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample.value)
    except ValueError as exc:  # the parser's only complaint about a malformed exposition
        raise LoadUnavailable(f"unreadable metrics: {exc}") from None
    missing = [name for name in (RUNNING, WAITING) if name not in samples]
    if missing:
        raise LoadUnavailable(f"no {' or '.join(missing)} in the metrics")
    kv = next((samples[name] for name in KV_CACHE if name in samples), [0.0])
    figures = [*samples[RUNNING], *samples[WAITING], *kv]
    if not all(math.isfinite(v) and v >= 0 for v in figures):
        raise LoadUnavailable(f"a load figure is negative or not finite: {figures}")
    return NodeLoad(
        requests_running=round(sum(samples[RUNNING])),
        requests_waiting=round(sum(samples[WAITING])),
        kv_cache_usage_perc=min(1.0, max(kv)),
    )


class VllmMetrics:
    """Reads the load from one vLLM server's ``/metrics``."""

    def __init__(
        self, session: aiohttp.ClientSession, *, vllm_url: str, timeout_s: float = 2.0
    ) -> None:
        self._session = session
        self._url = vllm_url.rstrip("/") + "/metrics"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def read(self) -> NodeLoad:
        try:
            async with self._session.get(self._url, timeout=self._timeout) as response:
                text = await response.text()
                if response.status != 200:
                    raise LoadUnavailable(f"{self._url} answered HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LoadUnavailable(f"{self._url}: {str(exc) or type(exc).__name__}") from exc
        return parse_vllm_metrics(text)
