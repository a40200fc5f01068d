"""A mixed load through Envoy with the openai SDK, as customers send it: chat, completions
and embeddings, streamed and not, streams the client leaves after their first chunks, and
non-streaming requests whose client gives up before the (delayed) answer; each outcome with
its ``x-request-id`` and the usage the answer reported."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2  # the transport of the openai SDK installed here
import openai
import pytest

from crosslogic.node.server import FAULT_HEADER
from crosslogic.stack import Stack
from tests.support.system import MODEL
from tests.support.tenants import CreatedKey

LEFT_MAX_TOKENS = 200  # a stream the client leaves after its first chunks
KINDS = ("chat", "chat-stream", "completion", "completion-stream", "embedding", "left-stream")
ABANDONED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
ENDPOINT = {
    "chat": "/v1/chat/completions",
    "chat-stream": "/v1/chat/completions",
    "left-stream": "/v1/chat/completions",
    "completion": "/v1/completions",
    "completion-stream": "/v1/completions",
    "embedding": "/v1/embeddings",
}


@dataclass(frozen=True)
class Outcome:
    kind: str
    request_id: str | None
    usage: tuple[int, int] | None = None  # (prompt, completion) as the answer said
    error: str | None = None


def stream_usage(lines: Iterator[str], *, leave_after: int | None) -> tuple[int, int] | None:
    for n, line in enumerate(lines):
        if leave_after is not None and n >= leave_after:
            return None
        if line.startswith("data: {"):
            usage = json.loads(line[len("data: ") :]).get("usage")
            if usage:
                return (usage["prompt_tokens"], usage["completion_tokens"])
    return None


def send(client: openai.OpenAI, kind: str, n: int) -> Outcome:
    words = " ".join(["word"] * (1 + n % 9))
    max_tokens = 1 + n % 13
    request_id = None
    try:
        if kind == "chat":
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": words}], max_tokens=max_tokens
            )
            request_id = raw.headers.get("x-request-id")
            u = raw.parse().usage
            assert u is not None
            return Outcome(kind, request_id, (u.prompt_tokens, u.completion_tokens))
        if kind == "completion":
            raw_c = client.completions.with_raw_response.create(
                model=MODEL, prompt=words, max_tokens=max_tokens
            )
            request_id = raw_c.headers.get("x-request-id")
            uc = raw_c.parse().usage
            assert uc is not None
            return Outcome(kind, request_id, (uc.prompt_tokens, uc.completion_tokens))
        if kind == "embedding":
            raw_e = client.embeddings.with_raw_response.create(model=MODEL, input=words)
            request_id = raw_e.headers.get("x-request-id")
            return Outcome(kind, request_id, (raw_e.parse().usage.prompt_tokens, 0))
        if kind == "completion-stream":
            with client.completions.with_streaming_response.create(
                model=MODEL, prompt=words, max_tokens=max_tokens, stream=True
            ) as response:  # no stream_options: the gateway asks for the usage chunk itself
                request_id = response.headers.get("x-request-id")
                usage = stream_usage(response.iter_lines(), leave_after=None)
        else:
            leave = kind == "left-stream"
            with client.chat.completions.with_streaming_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": words}],
                max_tokens=LEFT_MAX_TOKENS if leave else max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            ) as response:
                request_id = response.headers.get("x-request-id")
                usage = stream_usage(response.iter_lines(), leave_after=3 if leave else None)
                if leave:
                    return Outcome(kind, request_id)
        if usage is None:
            return Outcome(kind, request_id, error="stream ended without usage")
        return Outcome(kind, request_id, usage)
    except openai.APIStatusError as exc:
        return Outcome(kind, request_id, error=f"HTTP {exc.status_code} {exc.code}")
    except (openai.APIError, httpx2.HTTPError, OSError) as exc:
        return Outcome(kind, request_id, error=type(exc).__name__)


def abandon(stack: Stack, key: CreatedKey, endpoint: str) -> None:
    """A non-streaming request whose client gives up (timeout) before the node's late answer."""
    client = openai.OpenAI(
        base_url=stack.base_url, api_key=key.plaintext, max_retries=0, timeout=1.0
    )
    with client, pytest.raises(openai.APITimeoutError):
        client.post(
            endpoint.removeprefix("/v1"),
            body=abandoned_body(endpoint),
            cast_to=object,
            options={"headers": {FAULT_HEADER: "delay=4"}},
        )


def abandoned_body(endpoint: str) -> dict[str, Any]:
    if endpoint == "/v1/embeddings":
        return {"model": MODEL, "input": "one two three four five"}
    if endpoint == "/v1/completions":
        return {"model": MODEL, "prompt": "one two three", "max_tokens": 30}
    return {"model": MODEL, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 40}
