"""The pure decisions under generated input: they answer (Allow, a 4xx, a bounded estimate),
they never raise. A raise at an edge used to become Envoy's fail-open or a retryable 503."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from crosslogic.contracts.counters import MAX_AHEAD_US
from crosslogic.extauthz.decision import Allow, Model, decide, endpoint_of
from crosslogic.extauthz.request_body import (
    MAX_DEPTH,
    MAX_TOKEN_ESTIMATE,
    _parsed_by_json,
    _too_deep,
    parse_object,
)
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.config import Identity, LimitRow, LimitTable
from crosslogic.ratelimit.gcra import MAX_COST, LocalGcra, limits_for
from crosslogic.ratelimit.service import request_facts
from tests.support.key_records import key_record
from tests.support.rls import rls_request

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CATALOG = {"m": Model(id=1, name="m")}
PATHS = st.sampled_from(
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/m",
        "/v1/chat/completions/",
        "/v1/chat/completions?x=1",
        "/v1/chat/completions;a=b",
        "/v1/x",
        "/",
    ]
) | st.text(max_size=40)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=10**18, max_value=10**4000),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
REQUESTS = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "x", ""]) | JSON},
    optional={
        "messages": JSON,
        "prompt": JSON,
        "input": JSON,
        "max_tokens": NUMBERS,
        "max_completion_tokens": NUMBERS,
        "n": NUMBERS,
        "stream": JSON,
        "stream_options": JSON,
    },
)


def encoded(payload: object) -> bytes:
    return json.dumps(payload, allow_nan=True).encode()


def check(body: bytes, path: str = "/v1/chat/completions", method: str = "POST") -> None:
    result = decide(key=key_record(), method=method, path=path, body=body, catalog=CATALOG, now=NOW)
    if isinstance(result, ApiError):
        assert 400 <= result.status < 500, result
        json.loads(result.body())
    else:
        assert isinstance(result, Allow)
        assert 0 <= result.prompt_tokens <= result.tokens <= MAX_TOKEN_ESTIMATE or (
            result.model is None and result.tokens == 0
        )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REQUESTS, PATHS, st.sampled_from(["POST", "GET", "PUT", "", "post"]))
def test_decide_answers_any_request_within_bounds(
    payload: dict[str, object], path: str, method: str
) -> None:
    check(encoded(payload), path, method)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(b'{"model": "m", "max_tokens": 1e999}')
@example(b'{"model": "m", "max_tokens": NaN}')
@example(b'{"model": "m", "max_tokens": ' + b"9" * 5000 + b"}")
@example(b"[" * 100_000)
@example(b'{"a":' * 10_000)
@example(json.dumps({"model": "m"}).encode("utf-16"))
@example(json.dumps({"model": "m"}).encode("utf-32-le"))
@example(b"\xef\xbb\xbf" + json.dumps({"model": "m"}).encode())
@example(b'{"model": "\\ud800"}')
def test_decide_answers_any_bytes(body: bytes) -> None:
    check(body)


def test_huge_budgets_are_a_400_naming_the_param() -> None:
    for name in ("max_tokens", "max_completion_tokens", "n"):
        for value in (10**30, 0, -1, 1.5, True, "5"):
            result = decide(
                key=key_record(),
                method="POST",
                path="/v1/chat/completions",
                body=encoded({"model": "m", name: value}),
                catalog=CATALOG,
                now=NOW,
            )
            assert isinstance(result, ApiError) and result.status == 400 and result.param == name


def test_only_utf8_objects_within_the_depth_bound_are_read() -> None:
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert parse_object(encoded(good)) == good
    for body in (
        json.dumps(good).encode("utf-16"),
        json.dumps(good).encode("utf-32"),
        b"\xef\xbb\xbf" + encoded(good),
        b'{"model": "m", "x": Infinity}',
        b"[1]",
        b'{"x": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}",
    ):
        assert isinstance(parse_object(body), ApiError), body[:20]
    nested = b'{"x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert isinstance(parse_object(nested), dict)


def test_endpoints_are_exact_paths() -> None:
    assert endpoint_of("/v1/chat/completions?stream=1") == "/v1/chat/completions"
    assert endpoint_of("/v1/models/demo") == "/v1/models"
    for path in ("/v1/chat/completions/", "/v1/chat/completions;x", "/v1/models/a/b", "/v1"):
        assert endpoint_of(path) is None, path


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30) | NUMBERS.map(str), st.text(max_size=30) | NUMBERS.map(str))
@example("1e999", "1e999")
@example("nan", "-5")
@example("9" * 400, "0")
def test_request_facts_reads_any_descriptor(tokens: str, key_rpm: str) -> None:
    facts = request_facts(rls_request({"api_key_id": "a", "tokens": tokens, "key_rpm": key_rpm}))
    assert facts is not None
    identity, estimate = facts
    assert 0 <= estimate <= MAX_COST
    assert identity.key_rpm is None or identity.key_rpm > 0


TABLE = LimitTable(
    [
        LimitRow(scope="key", subject="a", layer="key", tokens_per_day=1, requests_per_second=1),
        LimitRow(scope="global", subject="", layer="global", tokens_per_minute=10**9),
    ],
    default_key_rpm=600,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_limits_keep_costs_and_counters_bounded(tokens: int) -> None:
    limits = limits_for(TABLE.resolve(Identity("t", "e", "a", "default")), tokens=tokens)
    assert limits and all(0 <= limit.cost <= MAX_COST for limit in limits)
    clock = [1_800_000_000.0]
    gcra = LocalGcra(clock=lambda: clock[0])
    for _ in range(3):
        reply = gcra.evaluate(limits)
        assert all(abs(x) <= MAX_AHEAD_US + 86400 * 10**6 for x in reply)


# what JSON a client sends, within 64-bit integers (orjson reads larger ones as floats; the
# decision refuses both alike, naming the parameter: test_huge_budgets_are_a_400_naming_the_param)
SMALL_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
PLAIN_JSON = st.recursive(
    st.none() | st.booleans() | SMALL_INTS | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(PLAIN_JSON.map(encoded) | st.binary(max_size=60))
@example(b'{"a": "\\ud800"}')  # a lone surrogate: json reads it, orjson does not
@example(b'{"a": 1e400}')  # json's infinity
@example(b'{"a": NaN}')
@example(b"[" * 2000 + b"]" * 2000)
def test_the_fast_parser_answers_what_json_answers(body: bytes) -> None:
    ours = parse_object(body)
    reference = _parsed_by_json(body)
    if isinstance(reference, dict) and not _too_deep(reference):
        assert ours == reference
    else:
        assert isinstance(ours, ApiError)
