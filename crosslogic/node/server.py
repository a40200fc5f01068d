"""The simulated GPU node's HTTP edge: an OpenAI-compatible server shaped like vLLM's.

Responses, SSE chunks and Prometheus metric names follow vLLM so the gateway, billing and
dashboards cannot tell this node from a real one. Token counts come from :mod:`.tokens`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

from crosslogic.node.tokens import (
    Generation,
    RequestError,
    completion_text,
    embedding_vector,
    encode_base64,
    model_not_found,
    parse_chat,
    parse_completion,
    parse_embeddings,
    token_text,
)

_MAX_BODY_BYTES = 16 * 1024 * 1024  # long prompts are the point of some load tests
_SSE_DONE = b"data: [DONE]\n\n"
_JSON = "application/json"
# A simulator's fault injection, for the gateway's tests: a request carrying
# "x-simulate-fault: reset" has its connection reset before any response byte, as a node
# that crashes mid-request does. A real node has no such header.
FAULT_HEADER = "x-simulate-fault"


@dataclass(frozen=True)
class NodeConfig:
    """What the node serves and how fast. Timing values of 0 mean "as fast as possible"."""

    model: str
    node_id: str
    ttft_s: float = 0.0
    tokens_per_second: float = 0.0
    max_model_len: int = 32768
    # Requests beyond this many wait, as vLLM's scheduler queues beyond max_num_seqs.
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a non-empty string")
        if self.ttft_s < 0 or self.tokens_per_second < 0:
            raise ValueError("ttft_s and tokens_per_second must not be negative")
        if self.max_model_len < 2 or self.max_num_seqs < 1:
            raise ValueError("max_model_len must be >= 2 and max_num_seqs >= 1")

    @property
    def token_interval_s(self) -> float:
        return 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """The load figures a heartbeat reports."""

    requests_running: int
    requests_waiting: int
    kv_cache_usage_perc: float


class _Metrics:
    """The node's Prometheus series, bound to one registry so several apps share a process."""

    def __init__(self, *, registry: CollectorRegistry, config: NodeConfig) -> None:
        model = {"model_name": config.model}
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefill tokens processed.", ["model_name"], registry=registry
        ).labels(**model)
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Generation tokens processed.",
            ["model_name"],
            registry=registry,
        ).labels(**model)
        self.node_generated = Counter(
            "crosslogic_node_generated_tokens",
            "Completion tokens this simulated node sent to clients.",
            ["model_name", "node_id"],
            registry=registry,
        ).labels(node_id=config.node_id, **model)
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
        self.running = Gauge(
            "vllm:num_requests_running",
            "Requests being generated.",
            ["model_name"],
            registry=registry,
        ).labels(**model)
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests waiting for a slot.",
            ["model_name"],
            registry=registry,
        ).labels(**model)
        self.kv_cache = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage, 0 to 1.",
            ["model_name"],
            registry=registry,
        ).labels(**model)

    def generated(self, tokens: int) -> None:
        if tokens:
            self.generation_tokens.inc(tokens)
            self.node_generated.inc(tokens)


class NodeState:
    """Per-app state: configuration, metrics and the slots that model engine concurrency."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = _Metrics(registry=self.registry, config=config)
        self.created = int(time.time())
        self.running = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        # Gauges read the counters at scrape time: nothing to update per request.
        self.metrics.running.set_function(lambda: self.running)
        self.metrics.waiting.set_function(lambda: self.waiting)
        self.metrics.kv_cache.set_function(lambda: self.load().kv_cache_usage_perc)

    def load(self) -> NodeLoad:
        return NodeLoad(
            requests_running=self.running,
            requests_waiting=self.waiting,
            kv_cache_usage_perc=min(1.0, self.running / self.config.max_num_seqs),
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        # Semaphore.acquire returns without suspending when a slot is free, so a request
        # is never observed as "waiting" unless it really queued.
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()


NODE_STATE = web.AppKey("crosslogic_node_state", NodeState)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(config: NodeConfig) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[NODE_STATE] = NodeState(config)
    app.router.add_post("/v1/chat/completions", _endpoint("chat", _chat))
    app.router.add_post("/v1/completions", _endpoint("completions", _completions))
    app.router.add_post("/v1/embeddings", _endpoint("embeddings", _embeddings))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app


def _endpoint(name: str, handler: _Handler) -> _Handler:
    """The one place a RequestError becomes an OpenAI error body; also counts requests."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        metrics = request.app[NODE_STATE].metrics
        if any(
            h == "authorization" or h.startswith("x-crosslogic-")
            for h in map(str.lower, request.headers)
        ):
            metrics.leaked_headers.inc()
        if request.headers.get(FAULT_HEADER) == "reset" and request.transport is not None:
            metrics.requests.labels(endpoint=name, code="reset").inc()
            request.transport.abort()
            raise asyncio.CancelledError  # nothing can be answered on an aborted connection
        try:
            response = await handler(request)
        except RequestError as exc:
            metrics.requests.labels(endpoint=name, code=str(exc.status)).inc()
            return _json(exc.body(), status=exc.status)
        metrics.requests.labels(endpoint=name, code=str(response.status)).inc()
        return response

    return wrapped


def _json(body: dict[str, Any], *, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type=_JSON)


async def _body(request: web.Request) -> object:
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestError(
            "We could not parse the JSON body of your request. The request body must be valid JSON."
        ) from None


def _served(state: NodeState, model: str) -> None:
    if model != state.config.model:
        raise model_not_found(model)


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[NODE_STATE]
    gen = parse_chat(await _body(request), max_model_len=state.config.max_model_len)
    _served(state, gen.model)
    return await _generate(request, state=state, gen=gen, chat=True)


async def _completions(request: web.Request) -> web.StreamResponse:
    state = request.app[NODE_STATE]
    gen = parse_completion(await _body(request), max_model_len=state.config.max_model_len)
    _served(state, gen.model)
    return await _generate(request, state=state, gen=gen, chat=False)


async def _generate(
    request: web.Request, *, state: NodeState, gen: Generation, chat: bool
) -> web.StreamResponse:
    prefix = "chatcmpl" if chat else "cmpl"
    completion = _Completion(
        id=f"{prefix}-{uuid.uuid4().hex}", created=int(time.time()), gen=gen, chat=chat
    )
    async with state.slot():
        if gen.stream:
            return await _stream(request, state=state, completion=completion)
        # The choices of one request are decoded in parallel, so only one sequence's
        # worth of time passes.
        delay = state.config.ttft_s + (gen.tokens_per_choice - 1) * state.config.token_interval_s
        if delay > 0:
            await asyncio.sleep(delay)
        state.metrics.prompt_tokens.inc(gen.prompt_tokens)
        state.metrics.generated(gen.completion_tokens)
        return _json(completion.whole())


@dataclass(frozen=True, slots=True)
class _Completion:
    """Builds the JSON bodies and SSE chunks of one chat or text completion."""

    id: str
    created: int
    gen: Generation
    chat: bool

    def _envelope(self, *, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": f"{kind}.chunk" if chunk and self.chat else kind,
            "created": self.created,
            "model": self.gen.model,
        }

    def usage(self) -> dict[str, int]:
        completion = self.gen.completion_tokens
        return {
            "prompt_tokens": self.gen.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.gen.prompt_tokens + completion,
        }

    def whole(self) -> dict[str, Any]:
        text = completion_text(self.gen.tokens_per_choice)
        choices = [
            {
                "index": i,
                **(
                    {"message": {"role": "assistant", "content": text}}
                    if self.chat
                    else {"text": text}
                ),
                "logprobs": None,
                "finish_reason": self.gen.finish_reason,
            }
            for i in range(self.gen.choices)
        ]
        return {**self._envelope(chunk=False), "choices": choices, "usage": self.usage()}

    def chunk(
        self, *, index: int, piece: str | None, finish: bool = False, role: bool = False
    ) -> bytes:
        if self.chat:
            delta: dict[str, str] = {}
            if role:
                delta["role"] = "assistant"
            if piece is not None:
                delta["content"] = piece
            choice: dict[str, Any] = {"index": index, "delta": delta}
        else:
            choice = {"index": index, "text": piece or ""}
        choice["logprobs"] = None
        choice["finish_reason"] = self.gen.finish_reason if finish else None
        body = {**self._envelope(chunk=True), "choices": [choice]}
        if self.gen.include_usage:
            # OpenAI and vLLM mark every chunk but the last usage-only one with null usage.
            body["usage"] = None
        return _sse(body)

    def usage_chunk(self) -> bytes:
        return _sse({**self._envelope(chunk=True), "choices": [], "usage": self.usage()})


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _stream(
    request: web.Request, *, state: NodeState, completion: _Completion
) -> web.StreamResponse:
    gen = completion.gen
    interval = state.config.token_interval_s
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    state.metrics.prompt_tokens.inc(gen.prompt_tokens)
    # Chunks are batched into one write until the next sleep: with no pacing the whole
    # stream goes out in a single write, which keeps the node cheap as a load-test upstream.
    pending: list[bytes] = []
    pending_tokens = 0
    sent = 0

    async def flush() -> None:
        nonlocal pending_tokens, sent
        await response.write(b"".join(pending))
        pending.clear()
        sent += pending_tokens  # counted only once the write went out
        pending_tokens = 0

    try:
        if state.config.ttft_s > 0:
            await asyncio.sleep(state.config.ttft_s)
        for index in range(gen.choices):
            if completion.chat:
                # Like vLLM and OpenAI, the role travels alone in an empty-content chunk.
                pending.append(completion.chunk(index=index, piece="", role=True))
            for token in range(gen.tokens_per_choice):
                if interval > 0 and sent + pending_tokens > 0:
                    await flush()
                    await asyncio.sleep(interval)
                pending.append(completion.chunk(index=index, piece=token_text(token)))
                pending_tokens += 1
            pending.append(completion.chunk(index=index, piece=None, finish=True))
        if gen.include_usage:
            pending.append(completion.usage_chunk())
        pending.append(_SSE_DONE)
        await flush()
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; what it received is counted below
    finally:
        state.metrics.generated(sent)
    return response


async def _embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[NODE_STATE]
    req = parse_embeddings(await _body(request))
    _served(state, req.model)
    async with state.slot():
        data = []
        for index, text in enumerate(req.inputs):
            vector = embedding_vector(text, dimensions=req.dimensions)
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": encode_base64(vector)
                    if req.encoding_format == "base64"
                    else vector,
                }
            )
        state.metrics.prompt_tokens.inc(req.prompt_tokens)
        usage = {"prompt_tokens": req.prompt_tokens, "total_tokens": req.prompt_tokens}
        return _json({"object": "list", "data": data, "model": req.model, "usage": usage})


async def _models(request: web.Request) -> web.Response:
    state = request.app[NODE_STATE]
    model = {
        "id": state.config.model,
        "object": "model",
        "created": state.created,
        "owned_by": "crosslogic",
        "max_model_len": state.config.max_model_len,
    }
    return _json({"object": "list", "data": [model]})


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[NODE_STATE].registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
