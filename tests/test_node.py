"""The simulated GPU node: token arithmetic, the OpenAI surface (through the official SDK),
its vLLM-named metrics, and registration with a fake control plane."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from crosslogic.node import tokens
from crosslogic.node.config import NodeConfig, NodeLoad
from crosslogic.node.main import run
from crosslogic.node.registration import RegistrationConfig, backoff_delay, run_registration
from crosslogic.node.server import NODE_STATE, make_app
from crosslogic.stack import free_port

MODEL = "demo-llama"


# --- harness -------------------------------------------------------------------------------


class _LoopThread:
    """An event loop in a background thread, so the synchronous SDK can call our servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[Any]) -> Any:
        async def wrap() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout=10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


@contextmanager
def _serving(app_factory: Callable[[], web.Application]) -> Iterator[str]:
    """Serve an app on a free port in a background loop; yields its base URL."""
    thread = _LoopThread()

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app_factory(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, int(runner.addresses[0][1])

    runner, port = thread.call(start())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        thread.call(runner.cleanup())
        thread.close()


@contextmanager
def _node(**overrides: Any) -> Iterator[tuple[str, openai.OpenAI]]:
    config = NodeConfig(**{"model": MODEL, "node_id": "node-test", **overrides})
    with _serving(lambda: make_app(config)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        try:
            yield url, client
        finally:
            client.close()


@dataclass(frozen=True)
class _Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _http(url: str, *, body: object = None, raw: bytes | None = None) -> _Reply:
    """A plain HTTP call for what the SDK hides: wire format, status codes, non-API routes."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return _Reply(response.status, response.headers["Content-Type"], response.read())
    except urllib.error.HTTPError as error:
        with error:
            return _Reply(error.code, error.headers["Content-Type"], error.read())


def _metrics(url: str) -> dict[str, float]:
    """Sample name (with labels folded in) -> value."""
    text = _http(f"{url}/metrics").body.decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


# --- tokens.py (pure) ------------------------------------------------------------------------


def test_chat_prompt_tokens_count_words_across_messages_and_parts() -> None:
    gen = tokens.parse_chat(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be  brief"},
                {"role": "user", "content": [{"type": "text", "text": "one two\nthree"}]},
                {"role": "assistant", "content": None},
            ],
            "max_completion_tokens": 5,
            "max_tokens": 99,
        },
        max_model_len=100,
    )
    assert (gen.prompt_tokens, gen.completion_tokens, gen.finish_reason) == (5, 5, "length")
    assert not gen.stream


def test_defaults_minimum_and_list_prompts() -> None:
    gen = tokens.parse_completion({"model": MODEL, "prompt": "   "}, max_model_len=100)
    assert (gen.prompt_tokens, gen.completion_tokens, gen.finish_reason) == (1, 16, "stop")
    gen = tokens.parse_completion(
        {"model": MODEL, "prompt": ["a b", "c"], "max_tokens": 3, "n": 2}, max_model_len=100
    )
    assert (gen.prompt_tokens, gen.choices, gen.completion_tokens) == (3, 4, 12)
    # Without an explicit limit the default shrinks to what fits in the context.
    gen = tokens.parse_completion({"model": MODEL, "prompt": "w " * 95}, max_model_len=100)
    assert gen.completion_tokens == 5
    emb = tokens.parse_embeddings({"model": MODEL, "input": ["a b c", "d", ""]})
    assert (emb.prompt_tokens, emb.inputs, emb.encoding_format) == (4, ("a b c", "d", ""), "float")


def test_generated_text_and_embeddings_are_deterministic() -> None:
    assert tokens.completion_text(3) == "tok0 tok1 tok2"
    assert "".join(tokens.token_text(i) for i in range(3)) == tokens.completion_text(3)
    vector = tokens.embedding_vector("hello")
    assert vector == tokens.embedding_vector("hello") != tokens.embedding_vector("hullo")
    assert len(vector) == 8 and all(-1 <= v < 1 for v in vector)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": 3, "messages": []}, "model"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0]"),
        ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, None),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": True},
            None,
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 99}, "n"),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
                "stream_options": {"include_usage": "yes"},
            },
            "stream_options.include_usage",
        ),
        ([1, 2], None),
    ],
)
def test_parse_chat_rejects_bad_input(body: object, param: str | None) -> None:
    with pytest.raises(tokens.RequestError) as info:
        tokens.parse_chat(body, max_model_len=100)
    error = info.value.body()["error"]
    assert info.value.status == 400 and error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    elif isinstance(body, dict) and len(body) > 2:
        assert error["param"] == next(k for k in body if k not in ("model", "messages"))


def test_context_length_and_other_endpoint_errors() -> None:
    with pytest.raises(tokens.RequestError) as info:
        tokens.parse_completion(
            {"model": MODEL, "prompt": "a b", "max_tokens": 99}, max_model_len=100
        )
    assert info.value.code == "context_length_exceeded"
    for body in ({"model": MODEL, "prompt": 7}, {"model": MODEL, "prompt": []}):
        with pytest.raises(tokens.RequestError):
            tokens.parse_completion(body, max_model_len=100)
    for embedding_body in (
        {"model": MODEL, "input": [1, 2]},
        {"model": MODEL, "input": "x", "encoding_format": "hex"},
        {"model": MODEL, "input": "x", "dimensions": 1000},
    ):
        with pytest.raises(tokens.RequestError):
            tokens.parse_embeddings(embedding_body)


# --- the HTTP surface, through the official SDK ------------------------------------------------


def test_chat_completions_and_models_through_the_sdk() -> None:
    with _node() as (_, client):
        messages: Any = [{"role": "user", "content": "say hello to the world"}]
        first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        assert first.object == "chat.completion" and first.id.startswith("chatcmpl-")
        assert first.choices[0].message.role == "assistant"
        assert first.choices[0].message.content == "tok0 tok1 tok2 tok3"
        assert first.choices[0].finish_reason == "length"
        assert first.usage is not None and again.usage is not None
        assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (5, 4)
        assert first.usage.total_tokens == 9 and again.usage == first.usage

        text = client.completions.create(model=MODEL, prompt="once upon a time")
        assert text.object == "text_completion"
        assert text.choices[0].text == tokens.completion_text(16)
        assert text.choices[0].finish_reason == "stop"
        assert text.usage is not None and text.usage.prompt_tokens == 4

        models = client.models.list()
        assert [(m.id, m.object, m.owned_by) for m in models.data] == [
            (MODEL, "model", "crosslogic")
        ]


def test_streaming_chat_with_usage_matches_vllm_shape() -> None:
    with _node() as (url, client):
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "count to three"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "tok0 tok1 tok2"
        )
        assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks[:-1])
        assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * 4 + ["length"]
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 3)

        # The raw wire format: SSE content type, explicit "usage": null, closing [DONE].
        body = {
            "model": MODEL,
            "prompt": "hi",
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        reply = _http(f"{url}/v1/completions", body=body)
        assert reply.content_type.startswith("text/event-stream")
        events = [line for line in reply.body.decode().split("\n") if line]
        assert events[-1] == "data: [DONE]"
        payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert all(p["object"] == "text_completion" for p in payloads)
        assert all("usage" in p and p["usage"] is None for p in payloads[:-1])
        assert payloads[-1]["choices"] == []
        assert payloads[-1]["usage"] == {
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "total_tokens": 3,
        }


def test_streaming_without_usage_has_no_usage_key() -> None:
    with _node() as (_, client):
        chunks = list(client.completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == "tok0 tok1"
        assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason


def test_embeddings_in_both_encodings() -> None:
    with _node() as (_, client):
        # The SDK asks for base64 by default and decodes float32 itself.
        result = client.embeddings.create(model=MODEL, input=["hello world", "bye"])
        assert [d.index for d in result.data] == [0, 1]
        assert result.data[0].embedding == tokens.embedding_vector("hello world")
        assert result.usage.prompt_tokens == result.usage.total_tokens == 3
        floats = client.embeddings.create(model=MODEL, input="bye", encoding_format="float")
        assert floats.data[0].embedding == result.data[1].embedding


def test_metrics_counters_equal_reported_usage() -> None:
    with _node() as (url, client):
        prompt = completion = 0
        for max_tokens in (1, 7):
            chat = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a b c"}], max_tokens=max_tokens
            )
            assert chat.usage is not None
            prompt += chat.usage.prompt_tokens
            completion += chat.usage.completion_tokens
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "d e"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.usage is not None:
                prompt += chunk.usage.prompt_tokens
                completion += chunk.usage.completion_tokens
        text = client.completions.create(model=MODEL, prompt=["x y", "z"], max_tokens=2)
        assert text.usage is not None and text.usage.completion_tokens == 4
        prompt += text.usage.prompt_tokens
        completion += text.usage.completion_tokens
        prompt += client.embeddings.create(model=MODEL, input="p q r s").usage.prompt_tokens
        with pytest.raises(openai.BadRequestError):  # refused requests cost nothing
            client.completions.create(model=MODEL, prompt="x", max_tokens=10**6)

        samples = _metrics(url)
        model = f"model_name={MODEL}"
        assert samples[f"vllm:prompt_tokens_total{{{model}}}"] == prompt == 6 + 2 + 3 + 4
        assert samples[f"vllm:generation_tokens_total{{{model}}}"] == completion == 1 + 7 + 5 + 4
        assert samples[f"crosslogic_node_generated_tokens_total{{{model},node_id=node-test}}"] == (
            completion
        )
        assert samples[f"vllm:num_requests_running{{{model}}}"] == 0
        assert samples[f"vllm:num_requests_waiting{{{model}}}"] == 0
        assert samples[f"vllm:kv_cache_usage_perc{{{model}}}"] == 0
        assert samples["crosslogic_node_requests_total{code=400,endpoint=completions}"] == 1


def test_bad_requests_get_openai_errors() -> None:
    with _node() as (url, client):
        with pytest.raises(openai.NotFoundError) as not_found:
            client.chat.completions.create(
                model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
            )
        assert not_found.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=-1
            )
        assert bad.value.param == "max_tokens" and bad.value.type == "invalid_request_error"

        raw = _http(f"{url}/v1/chat/completions", raw=b"{not json")
        assert raw.status == 400
        assert raw.json()["error"]["type"] == "invalid_request_error"
        assert (
            _http(f"{url}/v1/embeddings", body={"input": "x"}).json()["error"]["param"] == "model"
        )
        health = _http(f"{url}/health")
        assert health.status == 200 and health.json() == {"status": "ok"}


def test_pacing_honours_ttft_and_tokens_per_second() -> None:
    with _node(ttft_s=0.05, tokens_per_second=100) as (_, client):
        started = time.monotonic()
        arrivals = []
        for chunk in client.completions.create(model=MODEL, prompt="x", max_tokens=5, stream=True):
            if chunk.choices and chunk.choices[0].text:
                arrivals.append(time.monotonic() - started)
        assert arrivals[0] >= 0.05
        assert arrivals[-1] - arrivals[0] >= 4 * 0.01 * 0.9


def test_an_aborted_stream_counts_only_what_was_sent() -> None:
    with _node(tokens_per_second=200) as (url, client):
        stream = client.completions.create(model=MODEL, prompt="a b", max_tokens=500, stream=True)
        received = 0
        for _ in stream:
            received += 1
            if received == 3:
                break
        stream.close()
        # The node notices the hang-up at its next paced write, a few milliseconds later.
        deadline = time.monotonic() + 3
        while (samples := _metrics(url))[f"vllm:num_requests_running{{model_name={MODEL}}}"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        generated = samples[f"vllm:generation_tokens_total{{model_name={MODEL}}}"]
        assert received <= generated < 500
        assert samples[f"vllm:prompt_tokens_total{{model_name={MODEL}}}"] == 2


def test_waiting_requests_and_load_are_reported() -> None:
    config = NodeConfig(model=MODEL, node_id="n", max_num_seqs=1)

    async def scenario() -> list[NodeLoad]:
        app = make_app(config)
        node = app[NODE_STATE]
        seen = [node.load()]
        release = asyncio.Event()

        async def hold() -> None:
            async with node.slot():
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0)
        seen.append(node.load())
        release.set()
        await asyncio.gather(*tasks)
        seen.append(node.load())
        return seen

    idle, busy, done = asyncio.run(scenario())
    assert idle == done == NodeLoad(requests_running=0, requests_waiting=0, kv_cache_usage_perc=0.0)
    assert busy == NodeLoad(requests_running=1, requests_waiting=2, kv_cache_usage_perc=1.0)


# --- registration ------------------------------------------------------------------------------


@dataclass
class _FakeControlPlane:
    """Records admin API calls; can refuse registrations or forget the node."""

    refuse_registrations: int = 0
    forget_after_heartbeats: int | None = None
    calls: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    heartbeats: int = 0
    enough_heartbeats: int = 1
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/admin/nodes/register", self._register)
        app.router.add_post("/admin/nodes/{node_id}/{action}", self._node_action)
        return app

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.calls.append((request.path, body, request.headers.get("Authorization")))
        return dict(body)

    async def _register(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if self.refuse_registrations > 0:
            self.refuse_registrations -= 1
            return web.json_response({"error": "starting up"}, status=503)
        node_id = body["node_id"] or "assigned-1"
        return web.json_response({"node_id": node_id, "heartbeat_interval_s": 0.01})

    async def _node_action(self, request: web.Request) -> web.Response:
        await self._record(request)
        if request.match_info["action"] == "heartbeat":
            self.heartbeats += 1
            if self.heartbeats >= self.enough_heartbeats:
                self.enough.set()
            if self.heartbeats == self.forget_after_heartbeats:
                return web.json_response({"error": "unknown node"}, status=404)
        return web.json_response({})


def _registration_config(url: str, **overrides: Any) -> RegistrationConfig:
    values: dict[str, Any] = {
        "control_plane_url": url,
        "model": MODEL,
        "address": "127.0.0.1",
        "port": 1234,
        "retry_initial_s": 0.01,
        "retry_max_s": 0.02,
        **overrides,
    }
    return RegistrationConfig(**values)


async def _register_for_a_while(
    config: RegistrationConfig, *, cp: _FakeControlPlane | None = None
) -> list[str]:
    """Run the loop until ``cp`` saw enough heartbeats (or briefly, without one)."""
    registered: list[str] = []
    runner: web.AppRunner | None = None
    if cp is not None:
        runner = web.AppRunner(cp.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", config.port)
        await site.start()
    load = NodeLoad(requests_running=2, requests_waiting=1, kv_cache_usage_perc=0.5)
    task = asyncio.create_task(
        run_registration(config, load=lambda: load, on_registered=registered.append)
    )
    if cp is None:
        await asyncio.sleep(0.1)
    else:
        await asyncio.wait_for(cp.enough.wait(), timeout=3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if runner is not None:
        await runner.cleanup()
    return registered


def test_registration_retries_reregisters_and_deregisters() -> None:
    cp = _FakeControlPlane(refuse_registrations=2, forget_after_heartbeats=2, enough_heartbeats=4)
    port = free_port()
    config = _registration_config(
        f"http://127.0.0.1:{port}", port=port, node_id=None, admin_token="s3cret"
    )
    registered = asyncio.run(_register_for_a_while(config, cp=cp))

    paths = cp.paths()
    assert paths[:3] == ["/admin/nodes/register"] * 3  # two refusals, then success
    assert registered == ["assigned-1", "assigned-1"]  # again after the control plane forgot
    assert paths[-1] == "/admin/nodes/assigned-1/deregister"
    assert all(auth == "Bearer s3cret" for _, _, auth in cp.calls)
    register_body = cp.calls[0][1]
    assert register_body == {
        "node_id": None,
        "model": MODEL,
        "address": "127.0.0.1",
        "port": port,
        "provider": "local",
        "region": "local",
        "gpu_type": "simulated",
    }
    # Once assigned, the id is kept when registering again.
    assert [b["node_id"] for p, b, _ in cp.calls if p == "/admin/nodes/register"][
        -1
    ] == "assigned-1"
    heartbeat = next(b for p, b, _ in cp.calls if p.endswith("/heartbeat"))
    assert heartbeat == {"requests_running": 2, "requests_waiting": 1, "kv_cache_usage_perc": 0.5}


def test_registration_survives_an_unreachable_control_plane() -> None:
    port = free_port()
    config = _registration_config(f"http://127.0.0.1:{port}", node_id="n1")
    registered = asyncio.run(_register_for_a_while(config))
    assert registered == []


def test_backoff_doubles_and_is_capped() -> None:
    delays = [backoff_delay(a, initial=0.5, maximum=4) for a in range(6)]
    assert delays == [0.5, 1, 2, 4, 4, 4]
    assert backoff_delay(10_000, initial=0.5, maximum=4) == 4


# --- main.py -----------------------------------------------------------------------------------


def test_main_rejects_bad_flags_with_an_exit_code() -> None:
    assert run(["--port", "99999"]) == 2
    assert run(["--ttft-ms", "-5"]) == 2
    assert run(["--control-plane", "not-a-url"]) == 2
    assert run(["--max-num-seqs", "0"]) == 2


def test_main_serves_registers_and_deregisters_on_sigterm() -> None:
    cp = _FakeControlPlane()
    with _serving(cp.app) as cp_url:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from crosslogic.node.main import run; sys.exit(run(sys.argv[1:]))",
                "--port=0",
                "--node-id=node-main",
                "--model=m1",
                f"--control-plane={cp_url}",
                "--log-level=warning",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "ADMIN_TOKEN": "tok"},
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("node node-main serving m1 on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            assert _http(f"{url}/v1/models").json()["data"][0]["id"] == "m1"
            deadline = time.monotonic() + 3
            while "/admin/nodes/node-main/heartbeat" not in cp.paths():
                assert time.monotonic() < deadline, cp.paths()
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
    assert cp.paths()[0] == "/admin/nodes/register"
    assert cp.calls[0][1]["port"] == int(url.rsplit(":", 1)[1])
    assert cp.paths()[-1] == "/admin/nodes/node-main/deregister"
    assert all(auth == "Bearer tok" for _, _, auth in cp.calls)
