"""Tenants, environments and keys managed through the admin API, enforced through Envoy."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from crosslogic.stack import Stack
from tests.support.admin import Admin, new_key, ok
from tests.support.db import run_db, usage_row
from tests.support.inference import ask, client, wait_refused
from tests.support.metrics import node_metrics
from tests.support.protocols import over_both_protocols
from tests.support.system import MODEL
from tests.support.waiting import wait_until

stack = over_both_protocols()  # every test here runs over gRPC, then HTTP


def test_created_key_works_and_secrets_never_leave_again(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    created = new_key(admin, environment, name="ci")
    key = created["key"]
    assert re.fullmatch(r"clk_[A-Za-z0-9]{12}_[A-Za-z0-9]{43}", key)
    assert key.split("_")[1] == created["key_id"]
    assert ask(stack, key) == "tok0"
    listed = ok(admin("GET", f"/admin/keys?environment_id={environment['id']}"))["data"]
    shown = ok(admin("GET", f"/admin/keys/{created['key_id']}"))
    audit = ok(admin("GET", f"/admin/audit?entity_id={created['key_id']}"))["data"]
    everything = json.dumps([listed, shown, audit])
    secret = key.split("_", 2)[2]
    assert secret not in everything and "key_hash" not in everything
    assert [e["actor"] for e in audit] == ["operator:alice"]
    stored = run_db(stack, "SELECT key_hash FROM api_keys WHERE key_id = $1", created["key_id"])
    assert len(stored[0]["key_hash"]) == 32  # SHA-256 only


def test_revoke_takes_effect_everywhere_within_a_second(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    key = new_key(admin, environment)
    for _ in range(20):  # cached by every ext_authz process Envoy talks to
        assert ask(stack, key["key"]) == "tok0"
    ok(admin("POST", f"/admin/keys/{key['key_id']}/revoke"))
    revoked_at = time.monotonic()
    while True:
        try:
            ask(stack, key["key"])
        except openai.AuthenticationError as exc:
            assert "revoked" in exc.message
            break
        assert time.monotonic() - revoked_at < 1.0, "revocation took longer than 1 s"
    elapsed = time.monotonic() - revoked_at
    for _ in range(20):  # and no process still accepts it
        with pytest.raises(openai.AuthenticationError):
            ask(stack, key["key"])
    print(f"revocation observed through Envoy after {elapsed * 1000:.0f} ms")


def test_rotation_keeps_the_old_key_for_the_grace_period(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    old = new_key(admin, environment, allowed_models=[MODEL], rate_limit_rpm=1000)
    assert ask(stack, old["key"]) == "tok0"
    rotated = ok(admin("POST", f"/admin/keys/{old['key_id']}/rotate", {"grace_seconds": 2}))
    new = rotated["new"]
    assert new["allowed_models"] == [MODEL] and new["rate_limit_rpm"] == 1000
    assert new["rotated_from"] == old["api_key_id"]
    assert ask(stack, new["key"]) == "tok0"
    assert ask(stack, old["key"]) == "tok0"  # grace period
    wait_refused(stack, old["key"])  # the 2 s of grace are over
    with pytest.raises(openai.AuthenticationError, match="expired"):
        ask(stack, old["key"])
    assert ask(stack, new["key"]) == "tok0"


def test_suspended_tenant_and_disabled_environment_stop_all_their_keys(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    keys = [new_key(admin, environment)["key"] for _ in range(2)]
    assert all(ask(stack, k) == "tok0" for k in keys)
    ok(admin("PATCH", f"/admin/tenants/{environment['tenant_id']}", {"status": "suspended"}))
    for k in keys:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            ask(stack, k)
        assert caught.value.code == "organization_suspended"
    ok(admin("PATCH", f"/admin/tenants/{environment['tenant_id']}", {"status": "active"}))
    assert ask(stack, keys[0]) == "tok0"
    ok(admin("PATCH", f"/admin/environments/{environment['id']}", {"status": "disabled"}))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(stack, keys[1])
    assert caught.value.code == "environment_disabled"


def test_expiry_and_model_access(stack: Stack, admin: Admin, environment: dict[str, Any]) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    expiring = new_key(admin, environment, expires_at=soon)
    limited = new_key(admin, environment, allowed_models=["some-other-model"])
    assert ask(stack, expiring["key"]) == "tok0"
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(stack, limited["key"])
    assert caught.value.code == "model_not_allowed"
    assert [m.id for m in client(stack, limited["key"]).models.list()] == []
    wait_refused(stack, expiring["key"])  # the second to its expiry is over
    with pytest.raises(openai.AuthenticationError, match="expired"):
        ask(stack, expiring["key"])


def raw_post(stack: Stack, key: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{stack.base_url}/chat/completions",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text else {}


def test_edge_refusals(stack: Stack) -> None:
    assert stack.demo is not None
    key = stack.demo.api_key
    assert raw_post(stack, key, b'{"messages": []}')[1]["error"]["code"] == "missing_model"
    status, reply = raw_post(
        stack, key, b'{"model": "demo-llama", "pad": "' + b"x" * 2_000_000 + b'"}'
    )
    assert status == 413 and reply["error"]["code"] == "request_too_large"
    for bad in ("", "Bearer", "Basic abc", "Bearer clk_short"):
        request = urllib.request.Request(
            f"{stack.base_url}/models", headers={"Authorization": bad} if bad else {}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 401


def test_nodes_never_see_keys_or_internal_headers(stack: Stack) -> None:
    assert stack.demo is not None
    spoofing = openai.OpenAI(
        base_url=stack.base_url,
        api_key=stack.demo.api_key,
        max_retries=0,
        default_headers={"x-crosslogic-tenant-id": "someone-else", "x-crosslogic-usage": "sse"},
    )
    spoofing.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    for text in node_metrics(stack).values():
        leaked = re.search(
            r"^crosslogic_node_requests_with_gateway_headers_total (\S+)$", text, re.M
        )
        assert leaked is not None and float(leaked.group(1)) == 0.0


def test_last_used_is_recorded_without_a_write_per_request(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    key = new_key(admin, environment)
    assert key["last_used_at"] is None
    ask(stack, key["key"])
    wait_until(
        "last_used_at to be flushed",
        lambda: ok(admin("GET", f"/admin/keys/{key['key_id']}"))["last_used_at"] is not None,
        timeout=5,
    )


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/tenants", {"name": ""}, "name"),
        ("/admin/tenants", {"name": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_operator_input(admin: Admin, path: str, body: object, param: str) -> None:
    status, reply = admin("POST", path, body)
    assert status == 400 and reply["error"]["param"] == param


def test_bad_key_specs(admin: Admin, environment: dict[str, Any]) -> None:
    path = f"/admin/environments/{environment['id']}/keys"
    for spec, param in [
        ({"rate_limit_rpm": -1}, "rate_limit_rpm"),
        ({"expires_at": "yesterday"}, "expires_at"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"allowed_models": "all"}, "allowed_models"),
    ]:
        status, reply = admin("POST", path, spec)
        assert status == 400 and reply["error"]["param"] == param, reply
    assert admin("POST", "/admin/environments/not-a-uuid/keys", {})[0] == 404
    assert admin("POST", "/admin/keys/nope/rotate", {})[0] == 404


def test_names_with_a_trailing_newline_are_refused_cleanly(
    admin: Admin, environment: dict[str, Any]
) -> None:
    status, reply = admin(
        "POST", f"/admin/tenants/{environment['tenant_id']}/environments", {"name": "prod\n"}
    )
    assert status == 400 and reply["error"]["param"] == "name"


def test_clients_cannot_choose_the_request_id(stack: Stack) -> None:
    # the request id is the billing idempotency key: reusing one must not merge requests
    assert stack.demo is not None
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).encode()
    ids = []
    for _ in range(2):
        request = urllib.request.Request(
            f"{stack.base_url}/chat/completions",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {stack.demo.api_key}",
                "Content-Type": "application/json",
                "x-request-id": "chosen-by-the-client",
            },
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            ids.append(r.headers["x-request-id"])
    assert "chosen-by-the-client" not in ids and ids[0] != ids[1]


@pytest.mark.parametrize(
    "options",
    [
        '"stream_options": {"include_usage": null}',
        '"stream_options": null',
        '"stream_options": {"include\\u005fusage": false}',
        '"metadata": {"include_usage": false}, "stream_options": {"include_usage": false}',
        '"stream_options": {}',
    ],
)
def test_no_stream_escapes_usage_capture(stack: Stack, options: str) -> None:
    assert stack.demo is not None
    body = (
        f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "a b c"}}], '
        f'"max_tokens": 4, "stream": true, {options}}}'
    )
    request = urllib.request.Request(
        f"{stack.base_url}/chat/completions",
        data=body.encode(),
        method="POST",
        headers={"Authorization": f"Bearer {stack.demo.api_key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        stream = r.read().decode()
        request_id = r.headers["x-request-id"]
    assert '"usage": {"prompt_tokens": 3' in stream  # the node was asked for the usage chunk
    rows = usage_row(stack, request_id)
    assert rows, "billing never recorded the request"
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (3, 4)
    assert not rows[0]["usage_estimated"]


def test_streams_must_be_booleans(stack: Stack) -> None:
    assert stack.demo is not None
    for value in (b"1", b'"true"'):
        status, reply = raw_post(
            stack, stack.demo.api_key, b'{"model": "demo-llama", "stream": ' + value + b"}"
        )
        assert status == 400 and reply["error"]["param"] == "stream"


def test_large_embedding_responses_are_streamed_through_and_metered(stack: Stack) -> None:
    assert stack.demo is not None
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)
    raw = client.embeddings.with_raw_response.create(
        model=MODEL, input=["word"] * 2048, encoding_format="float"
    )
    assert len(raw.parse().data) == 2048  # a body well over Envoy's 1 MiB buffer
    request_id = raw.headers["x-request-id"]
    rows = usage_row(stack, request_id)
    assert rows, "billing never recorded the request"
    assert rows[0]["prompt_tokens"] == 2048
