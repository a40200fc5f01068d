"""Requests whose client leaves before the answer: billed once, at their estimate, flagged.

The pure rules on access-log entries first, then through Envoy with the openai SDK and raw
sockets against the session's stack: the simulated node answers late when asked
(``x-simulate-fault: delay=<seconds>``), and the client gives up before it does.
"""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import openai
import pytest

from crosslogic.billing.accesslog import parse
from crosslogic.extauthz.decision import estimate_prompt, estimate_tokens
from crosslogic.node.server import FAULT_HEADER, fault_delay
from crosslogic.stack import Stack
from tests.support.db import run_db
from tests.support.metrics import metric
from tests.support.system import MODEL
from tests.support.tenants import CreatedKey, demo_key
from tests.support.waiting import wait_until
from tests.test_billing_consumer import log_entry

# What Envoy logs for a non-streaming request whose client left before any answer: no
# response code, flag DC, the node it was sent to, no usage metadata.
LEFT_BEFORE_ANSWER: dict[str, object] = {
    "status": 0,
    "flags": "DC",
    "prompt_tokens": None,
    "completion_tokens": None,
    "prompt_estimate": 12.0,
    "token_estimate": "112",  # ext_authz writes it as a string (a rate-limit descriptor)
}


def record_of(**changes: object) -> Any:
    record, _ = parse(json.dumps(log_entry(**changes)).encode())
    return record


def test_a_request_left_before_its_answer_is_billed_at_its_estimate_flagged() -> None:
    record = record_of(**LEFT_BEFORE_ANSWER)
    assert (record.prompt_tokens, record.completion_tokens) == (12, 100)
    assert record.usage_estimated and record.abandoned and record.status_code == 0


def test_a_request_left_while_its_answer_was_sent_is_billed_at_its_real_usage() -> None:
    record = record_of(status=200, flags="DC", prompt_tokens=5.0, completion_tokens=9.0)
    assert (record.prompt_tokens, record.completion_tokens) == (5, 9)
    assert record.abandoned and not record.usage_estimated


def test_a_stream_left_before_any_token_is_billed_its_prompt_estimate() -> None:
    record = record_of(**{**LEFT_BEFORE_ANSWER, "streamed": True})
    assert (record.prompt_tokens, record.completion_tokens, record.usage_estimated) == (12, 0, True)


def test_refusals_and_error_answers_are_not_billed_as_work() -> None:
    # refused before any node (rate limit, no healthy node): no row at all
    assert record_of(**{**LEFT_BEFORE_ANSWER, "upstream_host": None, "status": 429}) is None
    assert record_of(**{**LEFT_BEFORE_ANSWER, "upstream_host": None}) is None
    # the node refused it: nothing generated
    error = record_of(**{**LEFT_BEFORE_ANSWER, "status": 400, "flags": "-"})
    assert (error.prompt_tokens, error.completion_tokens, error.usage_estimated) == (0, 0, False)
    assert not error.abandoned


def test_the_node_delays_only_as_asked_and_within_bounds() -> None:
    assert fault_delay(None) == fault_delay("reset") == fault_delay("delay=x") == 0.0
    assert fault_delay("delay=nan") == fault_delay("delay=-3") == 0.0
    assert fault_delay("delay=1.5") == 1.5 and fault_delay("delay=1e9") == 30.0


# --- through Envoy ---------------------------------------------------------------------

DELAY_S = 4.0  # the node's answer comes this late
PATIENCE_S = 1.0  # the client gives up after this long

REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "one two three four five six"}],
        "max_tokens": 40,
    },
    "/v1/completions": {"model": MODEL, "prompt": "one two three four", "max_tokens": 30},
    "/v1/embeddings": {"model": MODEL, "input": "one two three four five six seven"},
}


def give_up(stack: Stack, key: CreatedKey, endpoint: str) -> None:
    """Send one non-streaming request with the SDK, which times out and closes before the
    (delayed) answer."""
    client = openai.OpenAI(
        base_url=stack.base_url, api_key=key.plaintext, max_retries=0, timeout=PATIENCE_S
    )
    with client, pytest.raises(openai.APITimeoutError):
        client.post(
            endpoint.removeprefix("/v1"),
            body=REQUESTS[endpoint],
            cast_to=object,
            options={"headers": {FAULT_HEADER: f"delay={DELAY_S}"}},
        )


def rows_of(stack: Stack, key: CreatedKey, *, count: int) -> list[dict[str, Any]]:
    def rows() -> list[dict[str, Any]] | None:
        found = run_db(
            stack,
            "SELECT * FROM usage_records WHERE api_key_id = $1 ORDER BY started_at",
            key.api_key_id,
        )
        return [dict(r) for r in found] if len(found) >= count else None

    return wait_until(f"{count} usage row(s) of key {key.key_id}", rows, timeout=20)


def abandoned_count(stack: Stack, endpoint: str) -> float:
    labels = f'endpoint="{endpoint}",streamed="false"'
    return metric(stack, f"crosslogic_billing_abandoned_requests_total{{{labels}}}")


@pytest.mark.parametrize("endpoint", sorted(REQUESTS))
def test_a_client_leaving_before_the_answer_leaves_one_estimated_row(
    stack: Stack, endpoint: str
) -> None:
    key = demo_key(stack, name=f"abandon-{uuid.uuid4().hex[:8]}")
    before = abandoned_count(stack, endpoint)
    give_up(stack, key, endpoint)
    (row,) = rows_of(stack, key, count=1)
    payload = REQUESTS[endpoint]
    prompt = estimate_prompt(endpoint, payload)
    total = estimate_tokens(endpoint, payload)
    assert isinstance(total, int)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, total - prompt)
    assert row["usage_estimated"] is True and row["streamed"] is False
    assert row["status_code"] == 0 and "DC" in row["response_flags"].split(",")
    assert row["endpoint"] == endpoint and row["source"] == "access_log"
    wait_until(
        "the abandoned request counted",
        lambda: abandoned_count(stack, endpoint) >= before + 1 or None,
        timeout=10,
    )
    # billed once: the node's late answer, to a connection Envoy reset, adds no row
    assert len(rows_of(stack, key, count=1)) == 1


def test_a_stream_left_before_its_first_byte_is_billed_its_prompt_estimate(stack: Stack) -> None:
    key = demo_key(stack, name=f"abandon-stream-{uuid.uuid4().hex[:8]}")
    client = openai.OpenAI(
        base_url=stack.base_url, api_key=key.plaintext, max_retries=0, timeout=PATIENCE_S
    )
    payload = REQUESTS["/v1/chat/completions"]
    with client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            **payload, stream=True, extra_headers={FAULT_HEADER: f"delay={DELAY_S}"}
        )
    (row,) = rows_of(stack, key, count=1)
    prompt = estimate_prompt("/v1/chat/completions", payload)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, 0)
    assert row["usage_estimated"] is True and row["streamed"] is True
    assert row["status_code"] == 0 and "DC" in row["response_flags"].split(",")


def test_a_refused_request_is_not_billed_and_an_abandoned_one_is(stack: Stack) -> None:
    key = demo_key(stack, name=f"abandon-rl-{uuid.uuid4().hex[:8]}", rate_limit_rpm=1)
    give_up(stack, key, "/v1/chat/completions")
    client = openai.OpenAI(base_url=stack.base_url, api_key=key.plaintext, max_retries=0)
    with client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**REQUESTS["/v1/chat/completions"])
    (row,) = rows_of(stack, key, count=1)
    assert row["status_code"] == 0 and row["usage_estimated"] is True


def test_a_client_leaving_while_the_answer_is_sent_is_billed_its_real_usage(
    stack: Stack,
) -> None:
    """The node answered in full (usage known to Envoy); the client reads the response's
    first bytes and closes: the row has the node's real counts."""
    key = demo_key(stack, name=f"abandon-late-{uuid.uuid4().hex[:8]}")
    body = json.dumps({**REQUESTS["/v1/chat/completions"], "max_tokens": 2000, "n": 4}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {key.plaintext}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", stack.settings.envoy_port), timeout=10) as sock:
        sock.sendall(head + body)
        first = sock.recv(256)
    assert first.startswith(b"HTTP/1.1 200"), first
    (row,) = rows_of(stack, key, count=1)
    assert row["usage_estimated"] is False and row["status_code"] == 200
    # the simulated node generates every token it is allowed: 4 choices x 2000
    assert row["completion_tokens"] == 8000
