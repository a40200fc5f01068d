"""The log format (crosslogic.logs): one JSON object per line, the redaction of every secret
shape and of the settings' own secrets, uncaught exceptions, and the request id where a
request is handled. tests/test_logs.py reads the logs of a whole running system."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

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
from tests.support.logs import (
    FIELDS,
)


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


def test_a_secret_that_contains_another_is_masked_whole() -> None:
    with captured("password", "password-and-more") as out:
        logging.getLogger("crosslogic.test_logs").warning("[password-and-more]")
    assert lines_of(out)[0]["message"] == "[***]"


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
