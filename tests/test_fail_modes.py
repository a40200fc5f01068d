"""Explicit failure modes: a service down behind Envoy is answered fast and clearly."""

from __future__ import annotations

import openai
import pytest

from crosslogic.ports import port_in_use
from crosslogic.stack import Stack
from tests.support.system import MODEL, stop_service
from tests.support.waiting import wait_until


def ask(client: openai.OpenAI) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_authorization_down_fails_closed_with_a_clear_503(
    request: pytest.FixtureRequest, protocol: str
) -> None:
    stack: Stack = request.getfixturevalue(f"{protocol}_stack")
    assert stack.demo is not None
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)
    count = stop_service(stack, "extauthz")
    try:
        wait_until("ext_authz to stop", lambda: not port_in_use(stack.settings.extauthz_port))
        with pytest.raises(openai.InternalServerError) as caught:
            ask(client)
        assert caught.value.status_code == 503
        assert caught.value.code == "authorization_unavailable"
    finally:
        stack.start_service("extauthz", processes=count)
        wait_until("ext_authz to start", lambda: port_in_use(stack.settings.extauthz_port))
    wait_until("requests to pass again", lambda: _passes(client), timeout=10)


def test_rate_limit_service_down_fails_open(grpc_stack: Stack) -> None:
    """Only where the rate-limit service decides (RATELIMIT_AT=service)."""
    stack = grpc_stack
    assert stack.demo is not None
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)
    count = stop_service(stack, "ratelimit")
    try:
        wait_until("ratelimit to stop", lambda: not port_in_use(stack.settings.ratelimit_port))
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
        assert raw.parse().choices[0].message.content == "tok0"
        assert "x-ratelimit-limit-requests" not in raw.headers  # nobody counted it
    finally:
        stack.start_service("ratelimit", processes=count)
        wait_until("ratelimit to start", lambda: port_in_use(stack.settings.ratelimit_port))


def _passes(client: openai.OpenAI) -> bool:
    try:
        ask(client)
        return True
    except openai.APIStatusError:
        return False
