"""The simulated GPU node's HTTP edge: an OpenAI-compatible aiohttp app shaped like vLLM's.

Responses, SSE chunks and Prometheus metric names follow vLLM so the gateway, billing and
dashboards cannot tell this node from a real one. Requests are validated and counted in
:mod:`.tokens`, completions built in :mod:`.completions`; ``_endpoint`` is the one place a
:class:`~crosslogic.node.tokens.RequestError` becomes an OpenAI error body.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest

from crosslogic.contracts import routing
from crosslogic.node.completions import Completion, stream
from crosslogic.node.config import NodeConfig
from crosslogic.node.state import NodeState
from crosslogic.node.tokens import (
    Generation,
    RequestError,
    embedding_vector,
    encode_base64,
    model_not_found,
    parse_chat,
    parse_completion,
    parse_embeddings,
)

_MAX_BODY_BYTES = 16 * 1024 * 1024  # long prompts are the point of some load tests
_JSON = "application/json"
# A simulator's fault injection, for the gateway's tests: a request carrying
# "x-simulate-fault: reset" has its connection reset before any response byte, as a node
# that crashes mid-request does; "x-simulate-fault: delay=<seconds>" (at most MAX_FAULT_DELAY_S)
# is answered that much later, as a node with a long queue is (a client can give up before
# any endpoint answers). A real node has no such header.
FAULT_HEADER = "x-simulate-fault"
MAX_FAULT_DELAY_S = 30.0

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
            h == "authorization" or h.startswith(routing.INTERNAL_HEADER_PREFIX)
            for h in map(str.lower, request.headers)
        ):
            metrics.leaked_headers.inc()
        if request.headers.get(FAULT_HEADER) == "reset" and request.transport is not None:
            metrics.requests.labels(endpoint=name, code="reset").inc()
            request.transport.abort()
            raise asyncio.CancelledError  # nothing can be answered on an aborted connection
        delay = fault_delay(request.headers.get(FAULT_HEADER))
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            response = await handler(request)
        except RequestError as exc:
            metrics.requests.labels(endpoint=name, code=str(exc.status)).inc()
            return _json(exc.body(), status=exc.status)
        metrics.requests.labels(endpoint=name, code=str(response.status)).inc()
        return response

    return wrapped


def fault_delay(fault: str | None) -> float:
    """The seconds a "delay=<seconds>" fault asks for (0 for any other value)."""
    if fault is None or not fault.startswith("delay="):
        return 0.0
    try:
        seconds = float(fault[len("delay=") :])
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_FAULT_DELAY_S) if seconds == seconds else 0.0


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
    completion = Completion(
        id=f"{prefix}-{uuid.uuid4().hex}", created=int(time.time()), gen=gen, chat=chat
    )
    async with state.slot():
        if gen.stream:
            return await stream(request, state=state, completion=completion)
        # The choices of one request are decoded in parallel, so only one sequence's
        # worth of time passes.
        delay = state.config.ttft_s + (gen.tokens_per_choice - 1) * state.config.token_interval_s
        if delay > 0:
            await asyncio.sleep(delay)
        state.metrics.prompt_tokens.inc(gen.prompt_tokens)
        state.metrics.generated(gen.completion_tokens)
        return _json(completion.whole())


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
