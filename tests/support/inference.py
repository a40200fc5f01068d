"""Inference through Envoy with the official openai SDK, as a customer sends it."""

from __future__ import annotations

import openai

from crosslogic.stack import Stack
from tests.support.system import MODEL
from tests.support.waiting import wait_until


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)


def ask(stack: Stack, key: str, model: str = MODEL) -> str | None:
    """One one-token chat completion with ``key``: the node's answer."""
    reply = client(stack, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    return reply.choices[0].message.content


def refused(stack: Stack, key: str) -> str | None:
    """Envoy's 401 message for ``key``, or None if a request with it passes."""
    try:
        ask(stack, key)
    except openai.AuthenticationError as exc:
        return exc.message
    return None


def wait_refused(stack: Stack, key: str, *, timeout: float = 5.0) -> str:
    """Once ``key`` is refused (revoked, expired, its grace over): Envoy's 401 message."""
    message: str = wait_until("the key to be refused", lambda: refused(stack, key), timeout=timeout)
    return message
