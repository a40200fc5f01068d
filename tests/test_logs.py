"""No secret in any log, and one format for ours: a whole session on the test system (keys,
bad keys, a rotation, node tokens and credentials, the operator token, refusals), after which
every log file the system wrote is read. The format itself: tests/test_log_format.py."""

from __future__ import annotations

import json
import re
import secrets
import string
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from crosslogic.fleet import credentials
from crosslogic.ports import free_port
from crosslogic.stack import Stack
from tests.support.admin import Admin, new_key, ok
from tests.support.db import run_db
from tests.support.inference import ask, client
from tests.support.logs import (
    FIELDS,
    NODE_ANNOUNCEMENT,
    complete_lines,
    log_files,
    ours,
    records,
)
from tests.support.system import MODEL
from tests.support.waiting import wait_until

# a secret of ours or Stripe's, whole: what the session's other tests may have sent too
SHAPED = re.compile(r"(clk_[A-Za-z0-9]*_|clrt_|clnc_|sk_(live|test)_)[A-Za-z0-9]{16,}")


# -- a whole session, then every log file ------------------------------------------------------


def _random(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def call(
    stack: Stack,
    method: str,
    path: str,
    body: object = None,
    *,
    token: str | None,
    request_id: str | None = None,
) -> tuple[int, Any, str | None]:
    """(status, JSON body, X-Request-Id) of an admin API call with ``token`` as the bearer."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        stack.admin_url + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r), r.headers.get("X-Request-Id")
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc), exc.headers.get("X-Request-Id")


def refused_with(stack: Stack, key: str) -> int:
    try:
        ask(stack, key)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_a_whole_session_leaves_json_lines_and_no_secret_in_any_log(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    sent: list[str] = [stack.settings.admin_token, stack.settings.node_registration_token]
    # keys: made, used through Envoy with the openai SDK (a stream too), rotated, revoked
    first = new_key(admin, environment, allowed_models=[MODEL])
    sent.append(first["key"])
    assert ask(stack, first["key"]) is not None
    stream = client(stack, first["key"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    )
    assert [chunk for chunk in stream]
    assert client(stack, first["key"]).models.list().data
    rotated = ok(admin("POST", f"/admin/keys/{first['key_id']}/rotate", {"grace_seconds": 60}))
    second = rotated["new"]
    sent.append(second["key"])
    assert ask(stack, second["key"]) is not None and ask(stack, first["key"]) is not None
    ok(admin("POST", f"/admin/keys/{second['key_id']}/revoke"))
    wait_until("the revoked key to be refused", lambda: refused_with(stack, second["key"]) == 401)
    # bad keys: unknown but well formed, malformed, someone else's, and a wrong model
    unknown = f"clk_{_random(12)}_{_random(43)}"
    malformed = f"clk_{_random(30)}"
    foreign = f"sk-{_random(40)}"
    sent += [unknown, malformed, foreign]
    for bad in (unknown, malformed, foreign):
        assert refused_with(stack, bad) == 401
    with pytest.raises(openai.APIStatusError):
        ask(stack, first["key"], model="no-such-model")
    # node tokens and credentials: a registration, a heartbeat, refusals, a deregistration
    created = ok(admin("POST", "/admin/node-tokens", {"name": "logs"}))
    token = str(created["token"])
    sent.append(token)
    node = {"node_id": f"logs-{time.monotonic_ns()}", "model": MODEL, "address": "127.0.0.1"}
    node["port"] = free_port()
    status, registered, request_id = call(
        stack, "POST", "/admin/nodes/register", node, token=token, request_id="logs-register-1"
    )
    assert status == 200, registered
    assert request_id == "logs-register-1"  # the caller's id comes back
    credential = str(registered["node_credential"])
    sent.append(credential)
    beat = {"requests_running": 0, "requests_waiting": 0, "kv_cache_usage_perc": 0.0}
    path = f"/admin/nodes/{node['node_id']}"
    assert call(stack, "POST", f"{path}/heartbeat", beat, token=credential)[0] == 200
    wrong_credential = credentials.new_node_credential()
    wrong_token = credentials.new_registration_token()
    sent += [wrong_credential, wrong_token]
    assert call(stack, "POST", f"{path}/heartbeat", beat, token=wrong_credential)[0] in (401, 403)
    assert call(stack, "POST", "/admin/nodes/register", node, token=wrong_token)[0] == 401
    assert call(stack, "POST", f"{path}/deregister", token=credential)[0] == 200
    ok(admin("DELETE", f"/admin/node-tokens/{created['id']}"))
    # the operator token, a wrong one, and refusals: bad input, unknown routes
    wrong_operator = secrets.token_urlsafe(24)
    sent.append(wrong_operator)
    status, _, generated = call(stack, "GET", "/admin/nodes", token=wrong_operator)
    assert status == 401 and generated  # an id of its own when the caller sends none
    assert (
        call(stack, "POST", "/admin/tenants", {"nme": 1}, token=stack.settings.admin_token)[0]
        == 400
    )
    status, _, unusable = call(
        stack, "GET", "/admin/nope", token=stack.settings.admin_token, request_id="a b\tc"
    )
    assert status == 404 and unusable and unusable != "a b\tc"  # aiohttp's own refusal too
    assert call(stack, "GET", "/admin/keys", token=stack.settings.admin_token)[0] == 200
    # billed: billing read the access log lines of these requests
    wait_until(
        "billing to write the session's usage",
        lambda: (
            run_db(
                stack,
                "SELECT count(*) FROM usage_records WHERE api_key_id = $1",
                first["api_key_id"],
            )[0][0]
            >= 3
        ),
    )
    # the node's registration was logged by the admin API, with the caller's request id
    admin_logs = [p for p in log_files(stack) if p.name.startswith("admin-")]
    wait_until(
        "the admin API's line about the registration",
        lambda: any(
            r.get("request_id") == "logs-register-1" and node["node_id"] in r["message"]
            for p in admin_logs
            for r in records(p)
        ),
    )

    files = log_files(stack)
    names = {p.name for p in files}
    assert {"admin-1.log", "billing-1.log", "extauthz-1.log", "xds-1.log"} <= names, names
    assert {"envoy.log", "postgres.log", "redis.log"} <= names, names  # read, not parsed
    secrets_sent = [s for s in sent if s]
    for path in files:
        text = path.read_text(errors="replace")
        for secret in secrets_sent:
            assert secret not in text, f"a secret ({secret[:5]}...) in {path.name}"
        leaked = SHAPED.search(text)
        assert leaked is None, f"{leaked[0][:9]}... in {path.name}"  # other tests' secrets
        if ours(path):
            for line in complete_lines(path):
                if NODE_ANNOUNCEMENT.fullmatch(line):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    pytest.fail(f"not a JSON line in {path.name}: {line[:300]}")
                missing = [f for f in FIELDS if f not in record]
                assert not missing, f"{path.name}: {line[:300]} lacks {missing}"
