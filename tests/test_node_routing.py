"""Node registry through Envoy: a node that registers gets traffic, a node that dies does not."""

from __future__ import annotations

import time

import openai

from crosslogic.stack import Stack
from tests.support.metrics import node_generated_tokens
from tests.support.system import MODEL


def one_token(client: openai.OpenAI) -> str | None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    return reply.choices[0].message.content


def test_node_joins_and_leaves_without_restart(stack: Stack, client: openai.OpenAI) -> None:
    started = time.monotonic()
    child = stack.start_node("late-joiner")
    try:
        # "within a few seconds": registration -> NOTIFY -> xDS push -> first health check
        while node_generated_tokens(stack).get("late-joiner", 0) == 0:
            assert time.monotonic() - started < 10, "the new node got no traffic within 10 s"
            for _ in range(10):
                one_token(client)
        # SIGKILL: no deregistration, the node just dies; Envoy retries elsewhere meanwhile
        child.proc.kill()
        stack.supervisor.stop_child(child)  # reaps it, so the stack's crash check ignores it
        for _ in range(30):
            assert one_token(client) == "tok0"
        stack.wait_healthy_nodes(2, timeout=10)
    finally:
        stack.supervisor.stop_child(child)
        stack.nodes.remove(child)
