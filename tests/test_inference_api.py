"""End to end through Envoy with the official openai SDK: what a customer sees."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from crosslogic.stack import Stack
from tests.support.db import usage_row
from tests.support.metrics import node_generated_tokens
from tests.support.protocols import over_both_protocols
from tests.support.system import MODEL
from tests.support.tenants import demo_key

stack = over_both_protocols()


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "one two three"}], max_tokens=5
    )
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 5)


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_streaming_without_usage_option_is_still_metered(
    stack: Stack, client: openai.OpenAI
) -> None:
    # the gateway asks the node for the usage chunk so that no stream escapes billing
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "a b"}], max_tokens=6, stream=True
    )
    chunks = list(raw.parse())
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    rows = usage_row(stack, raw.headers["x-request-id"])
    assert len(rows) == 1
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"], rows[0]["streamed"]) == (
        2,
        6,
        True,
    )


def test_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="say something", max_tokens=3)
    assert reply.choices[0].text == "tok0 tok1 tok2"
    stream = client.completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == "tok0 tok1"


def test_embeddings(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=MODEL, input=["first text", "second one here"])
    assert [d.index for d in reply.data] == [0, 1]
    assert reply.usage.prompt_tokens == 5


def test_models(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list()]
    assert client.models.retrieve(MODEL).id == MODEL


def test_wrong_key_is_refused(stack: Stack) -> None:
    for key in ("clk_abcdefgh_" + "x" * 40, "not-a-key"):
        bad = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert caught.value.code == "invalid_api_key"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"


def test_body_not_json_is_400(stack: Stack) -> None:
    assert stack.demo is not None
    request = urllib.request.Request(
        f"{stack.base_url}/chat/completions",
        data=b"{not json",
        method="POST",
        headers={"Authorization": f"Bearer {stack.demo.api_key}"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    assert json.load(caught.value)["error"]["code"] == "invalid_json"


def test_every_success_leaves_one_usage_row_matching_the_nodes(
    stack: Stack, client: openai.OpenAI
) -> None:
    before = node_generated_tokens(stack)
    request_ids = []
    for i in range(6):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "count " * (i + 1)}],
            max_tokens=i + 1,
        )
        request_ids.append(raw.headers["x-request-id"])
    stream = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "s"}], max_tokens=7, stream=True
    )
    list(stream.parse())
    request_ids.append(stream.headers["x-request-id"])
    rows = [usage_row(stack, rid) for rid in request_ids]
    assert all(len(r) == 1 for r in rows), rows
    completion = [r[0]["completion_tokens"] for r in rows]
    assert completion == [1, 2, 3, 4, 5, 6, 7]
    assert [r[0]["prompt_tokens"] for r in rows[:6]] == [1, 2, 3, 4, 5, 6]
    after = node_generated_tokens(stack)
    generated = sum(after.values()) - sum(before.get(k, 0.0) for k in after)
    assert generated == sum(completion)
    assert all(r[0]["cost_usd"] > 0 for r in rows)


def test_spoofed_internal_headers_change_nothing(stack: Stack) -> None:
    assert stack.demo is not None
    spoofing = openai.OpenAI(
        base_url=stack.base_url,
        api_key=stack.demo.api_key,
        max_retries=0,
        default_headers={
            "x-crosslogic-cluster": "control_plane",
            "x-crosslogic-allowed-models": "*",
        },
    )
    reply = spoofing.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    assert reply.model == MODEL


def test_rate_limit_per_key(stack: Stack) -> None:
    key = demo_key(stack, rate_limit_rpm=3)
    limited = openai.OpenAI(base_url=stack.base_url, api_key=key.plaintext, max_retries=0)
    for _ in range(3):
        raw = limited.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(openai.RateLimitError) as caught:
        limited.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
