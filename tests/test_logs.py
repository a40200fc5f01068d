"""One log format and no secrets in any log: the JSON lines themselves, the redaction of every
secret shape, the request id where a request is handled, and a whole session (keys, bad
keys, a rotation, node tokens and credentials, the operator token, refusals) after which
every log file the system wrote is read."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import secrets
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import openai
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from prometheus_client import CollectorRegistry

from crosslogic import logs
from crosslogic.billing.batch import read as read_batch
from crosslogic.errors import Unavailable
from crosslogic.extauthz import keys
from crosslogic.extauthz.authorizer import Authorizer, AuthzMetrics
from crosslogic.extauthz.service import AuthorizationService
from crosslogic.extauthz.store import KeyCache
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

SHAPED = re.compile(r"(clk_[A-Za-z0-9]*_|clrt_|clnc_|sk_(live|test)_)[A-Za-z0-9]{16,}")


@contextlib.contextmanager
def captured(*secrets: str) -> Iterator[io.StringIO]:
    """What this process logs meanwhile, as crosslogic.logs writes it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.Redaction(secrets))
    handler.setFormatter(logs.JsonFormatter("test"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def lines_of(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


# -- the format ----------------------------------------------------------------------------


def test_a_line_is_one_json_object_with_its_request_and_traceback() -> None:
    log = logging.getLogger("crosslogic.test_logs")
    with captured() as out:
        log.warning("plain %s", "line")
        token = logs.REQUEST_ID.set("req-ctx")
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed")
        finally:
            logs.REQUEST_ID.reset(token)
        log.error("a row", extra={"request_id": "req-row"})
    plain, failed, row = lines_of(out)
    assert all(field in line for line in (plain, failed, row) for field in FIELDS)
    assert plain["message"] == "plain line" and plain["level"] == "WARNING"
    assert plain["service"] == "test" and plain["logger"] == "crosslogic.test_logs"
    assert plain["time"].endswith("Z") and datetime.fromisoformat(plain["time"]).utcoffset() == (
        datetime.fromisoformat("2026-01-01T00:00:00+00:00").utcoffset()
    )
    assert "request_id" not in plain and "exception" not in plain
    assert failed["request_id"] == "req-ctx"
    assert "ValueError: boom\nsecond line" in failed["exception"]
    assert row["request_id"] == "req-row"


def test_an_unformattable_message_still_makes_a_line() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "%d items", ("many",), None)
    assert logs.Redaction().filter(record)
    line = json.loads(logs.JsonFormatter("test").format(record))
    assert "unformattable" in line["message"] and "%d items" in line["message"]


KEY = keys.generate()
TOKEN = credentials.new_registration_token()
CREDENTIAL = credentials.new_node_credential()


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (f"key {KEY.plaintext} used", KEY.plaintext, f"clk_{KEY.key_id}_***"),
        ("bad clk_" + "x" * 40, "x" * 40, "clk_***"),
        (f"registering with {TOKEN}", TOKEN[5:], "clrt_***"),
        (f"credential {CREDENTIAL}", CREDENTIAL[5:], "clnc_***"),
        ("Authorization: Bearer abc.DEF-ghi", "abc.DEF-ghi", "Authorization: ***"),
        ("{'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz", "'authorization': '***'"),
        ("[('authorization', 'tok-123456')]", "tok-123456", "'authorization', '***'"),
        ("bearer s3cr3t-value", "s3cr3t-value", "bearer ***"),
        ("stripe sk_live_51Habcdefgh", "51Habcdefgh", "sk_live_***"),
        ("postgresql://crosslogic:pa55word@db:5432/x", "pa55word", "crosslogic:***@db"),
        ("redis://:hunter22@cache:6379", "hunter22", "://:***@cache"),
        ("host=db password=hunter22 user=x", "hunter22", "password=***"),
        ("Settings(admin_token='abcdef123456')", "abcdef123456", "admin_token='***'"),
    ],
)
def test_every_secret_shape_is_masked(text: str, secret: str, kept: str) -> None:
    with captured() as out:
        logging.getLogger("crosslogic.test_logs").warning("%s", text)
    message = lines_of(out)[0]["message"]
    assert secret not in message and kept in message, message


def test_ordinary_words_are_left_alone() -> None:
    text = "basic setup: max_tokens=5 prompt_tokens=7 tokens_per_second=40 key_id=abc123"
    with captured() as out:
        logging.getLogger("crosslogic.test_logs").warning(text)
    assert lines_of(out)[0]["message"] == text


def test_the_settings_secrets_are_masked_in_messages_and_tracebacks() -> None:
    operator = secrets.token_urlsafe(24)  # the admin token's shape: no prefix to recognise
    with captured(operator, "short") as out:
        log = logging.getLogger("crosslogic.test_logs")
        try:
            raise RuntimeError(f"refused {operator}")
        except RuntimeError:
            log.exception("with %s", operator)
        log.warning("short words stay short")  # too short a secret to mask: shapes only
    failed, short = lines_of(out)
    assert operator not in json.dumps(failed) and failed["message"] == "with ***"
    assert "RuntimeError: refused ***" in failed["exception"]
    assert short["message"] == "short words stay short"


UNCAUGHT = """
import logging, threading, warnings
from crosslogic import logs
from crosslogic.billing.batch import read as read_batch
logs.configure(service="probe", level="info", secrets=["operator-secret-1"])
logging.getLogger("crosslogic.probe").info("hello operator-secret-1")
logging.getLogger("crosslogic.probe").debug("below the level")
warnings.warn("a warning")
thread = threading.Thread(target=lambda: 1 / 0, name="worker")
thread.start()
thread.join()
raise RuntimeError("boom with clk_abcdefabcdef_0123456789abcdefghijKLMNOP")
"""


def test_a_configured_process_logs_json_only_even_when_it_dies() -> None:
    run = subprocess.run(
        [sys.executable, "-W", "default", "-c", UNCAUGHT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1 and run.stdout == ""
    lines = [json.loads(line) for line in run.stderr.splitlines()]  # every line is JSON
    assert all(line["service"] == "probe" for line in lines)
    hello, warned, thread, died = lines
    assert hello["message"] == "hello ***"
    assert warned["logger"] == "py.warnings" and "a warning" in warned["message"]
    assert thread["level"] == "CRITICAL" and "ZeroDivisionError" in thread["exception"]
    assert (
        died["level"] == "CRITICAL"
        and "RuntimeError: boom with clk_abcdefabcdef_***" in (died["exception"])
    )


def test_ext_authz_lines_carry_envoys_request_id() -> None:
    async def fetch(key_hash: bytes) -> None:
        raise Unavailable("PostgreSQL", "connection refused")

    service = AuthorizationService(
        Authorizer(
            cache=KeyCache(fetch, ttl=1.0),  # type: ignore[arg-type]
            metrics=AuthzMetrics(CollectorRegistry()),
        )
    )
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.headers["authorization"] = f"Bearer {KEY.plaintext}"
    http.headers["x-request-id"] = "envoy-req-1"
    http.path, http.method = "/v1/chat/completions", "POST"
    with captured() as out:
        response = asyncio.run(service.Check(request, None))
    assert response.denied_response.status.code == 503
    (line,) = [x for x in lines_of(out) if x["logger"] == "crosslogic.extauthz.verdict"]
    assert line["request_id"] == "envoy-req-1" and line["level"] == "ERROR"
    assert KEY.plaintext not in out.getvalue()


def test_billing_knows_the_request_of_a_line_it_cannot_bill() -> None:
    # the consumer logs each malformed line with the request id it has, if any
    bad_field = (
        b'{"request_id": "req-bad", "api_key_id": "k", "model_id": "m", "upstream_host": "h",'
        b' "status": 500, "start_time": "2026-01-01T00:00:00.000Z"}'
    )
    batch = read_batch([bad_field, b"not JSON"], last_boot=None)
    assert [entry.request_id for entry in batch.malformed] == ["req-bad", None]


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
