"""The node's Prometheus series: the engine's under vLLM's names (dashboards cannot tell it from
a real node), the simulator's own under crosslogic_node_*."""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from crosslogic.node.config import NodeConfig

_Metric = TypeVar("_Metric", Counter, Gauge)


class NodeMetrics:
    """The node's series, bound to one registry so several apps share a process."""

    def __init__(self, *, registry: CollectorRegistry, config: NodeConfig) -> None:
        def per_model(kind: type[_Metric], name: str, documentation: str) -> _Metric:
            # vLLM labels every engine series with the model it serves, and only with that
            metric = kind(name, documentation, ["model_name"], registry=registry)
            return metric.labels(model_name=config.model)

        self.prompt_tokens = per_model(Counter, "vllm:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = per_model(
            Counter, "vllm:generation_tokens", "Generation tokens processed."
        )
        self.running = per_model(Gauge, "vllm:num_requests_running", "Requests being generated.")
        self.waiting = per_model(Gauge, "vllm:num_requests_waiting", "Requests waiting for a slot.")
        self.kv_cache = per_model(Gauge, "vllm:kv_cache_usage_perc", "KV-cache usage, 0 to 1.")
        self.node_generated = Counter(
            "crosslogic_node_generated_tokens",
            "Completion tokens this simulated node sent to clients.",
            ["model_name", "node_id"],
            registry=registry,
        ).labels(model_name=config.model, node_id=config.node_id)
        self.requests = Counter(
            "crosslogic_node_requests",
            "HTTP requests handled by the simulated node.",
            ["endpoint", "code"],
            registry=registry,
        )
        # a gateway in front must never pass the client's key or its own routing headers
        self.leaked_headers = Counter(
            "crosslogic_node_requests_with_gateway_headers",
            "Inference requests that arrived with an Authorization or x-crosslogic-* header.",
            registry=registry,
        )

    def generated(self, tokens: int) -> None:
        if tokens:
            self.generation_tokens.inc(tokens)
            self.node_generated.inc(tokens)
