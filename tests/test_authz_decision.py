"""The pure ext_authz decision and the key format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from crosslogic.extauthz import keys
from crosslogic.extauthz.decision import Allow, KeyRecord, Model, decide
from crosslogic.openai_errors import ApiError
from tests.support.key_records import key_record

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CATALOG = {"m": Model(id=1, name="m"), "other": Model(id=2, name="other")}


record = key_record


def run(
    key: KeyRecord, body: object = None, *, path: str = "/v1/chat/completions", method: str = "POST"
) -> Allow | ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body or {"model": "m"}).encode()
    return decide(key=key, method=method, path=path, body=raw, catalog=CATALOG, now=NOW)


def test_keys_are_prefixed_hashed_and_shape_checked() -> None:
    new = keys.generate()
    assert new.plaintext.startswith("clk_" + new.key_id + "_")
    assert keys.looks_valid(new.plaintext)
    assert keys.hash_key(new.plaintext) == new.key_hash and len(new.key_hash) == 32
    assert new.plaintext != keys.generate().plaintext
    assert not keys.looks_valid("sk-123") and not keys.looks_valid("clk_x_short")
    assert keys.bearer_token("Bearer abc") == "abc" and keys.bearer_token("Basic abc") is None


def test_allows_and_routes_to_the_model_cluster() -> None:
    decision = run(record())
    assert isinstance(decision, Allow) and decision.model == CATALOG["m"]
    assert decision.model.cluster == "model_1" and not decision.force_include_usage


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        (record(key_status="revoked"), 401, "invalid_api_key"),
        (record(expires_at=NOW - timedelta(seconds=1)), 401, "invalid_api_key"),
        (record(tenant_status="suspended"), 403, "organization_suspended"),
        (record(environment_status="disabled"), 403, "environment_disabled"),
        (record(allowed_models=frozenset({"other"})), 403, "model_not_allowed"),
    ],
)
def test_refusals(key: KeyRecord, status: int, code: str) -> None:
    decision = run(key)
    assert isinstance(decision, ApiError) and (decision.status, decision.code) == (status, code)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{nope", 400, "invalid_json"),
        (b"[1]", 400, "invalid_json"),
        ({"messages": []}, 400, "missing_model"),
        ({"model": "ghost"}, 404, "model_not_found"),
    ],
)
def test_bad_bodies(body: object, status: int, code: str) -> None:
    decision = run(record(), body)
    assert isinstance(decision, ApiError) and (decision.status, decision.code) == (status, code)


def test_streams_without_usage_option_are_forced_to_report_usage() -> None:
    forced = run(record(), {"model": "m", "stream": True})
    kept = run(record(), {"model": "m", "stream": True, "stream_options": {"include_usage": True}})
    assert isinstance(forced, Allow) and forced.force_include_usage
    assert isinstance(kept, Allow) and not kept.force_include_usage


def test_model_list_needs_no_body() -> None:
    decision = run(record(), b"", path="/v1/models", method="GET")
    assert isinstance(decision, Allow) and decision.model is None
