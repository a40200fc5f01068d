"""Inference through Envoy with the official openai SDK, as a customer sends it."""

from __future__ import annotations

import openai

from crosslogic.stack import Stack
from tests.support.system import MODEL


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)


def ask(stack: Stack, key: str, model: str = MODEL) -> str | None:
    """One one-token chat completion with ``key``: the node's answer."""
    reply = client(stack, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    return reply.choices[0].message.content
