"""The simulated GPU node's OpenAI surface (through the official SDK), its vLLM-named
metrics, pacing and load reporting."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crosslogic.agent.load import NodeLoad
from crosslogic.node import tokens
from crosslogic.node.config import NodeConfig
from crosslogic.node.server import NODE_STATE, make_app
from tests.support.serving import http_call, serving
from tests.support.system import MODEL
from tests.support.waiting import wait_until


@contextmanager
def _node(**overrides: Any) -> Iterator[tuple[str, openai.OpenAI]]:
    config = NodeConfig(**{"model": MODEL, "node_id": "node-test", **overrides})
    with serving(lambda: make_app(config)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        try:
            yield url, client
        finally:
            client.close()


def _metrics(url: str) -> dict[str, float]:
    """Sample name (with labels folded in) -> value."""
    text = http_call(f"{url}/metrics").body.decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


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
        reply = http_call(f"{url}/v1/completions", body=body)
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

        raw = http_call(f"{url}/v1/chat/completions", raw=b"{not json")
        assert raw.status == 400
        assert raw.json()["error"]["type"] == "invalid_request_error"
        assert (
            http_call(f"{url}/v1/embeddings", body={"input": "x"}).json()["error"]["param"]
            == "model"
        )
        health = http_call(f"{url}/health")
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
        running = f"vllm:num_requests_running{{model_name={MODEL}}}"

        def ended() -> dict[str, float] | None:
            samples = _metrics(url)
            return None if samples[running] else samples

        samples = wait_until("the request to end", ended, timeout=3)
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
        await asyncio.sleep(0)  # one turn of the loop: every task takes or queues for the slot
        seen.append(node.load())
        release.set()
        await asyncio.gather(*tasks)
        seen.append(node.load())
        return seen

    idle, busy, done = asyncio.run(scenario())
    assert idle == done == NodeLoad(requests_running=0, requests_waiting=0, kv_cache_usage_perc=0.0)
    assert busy == NodeLoad(requests_running=1, requests_waiting=2, kv_cache_usage_perc=1.0)
