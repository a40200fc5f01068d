"""Where ext_authz sends a model request, pure: the region header, the key's allowed regions,
the cluster chosen, and the prompt-prefix hash of prefix-affinity models."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from crosslogic.extauthz import placement, responses
from crosslogic.extauthz.decision import Allow, KeyRecord, Model, decide
from crosslogic.openai_errors import ApiError
from tests.support.key_records import key_record

NOW = datetime(2026, 1, 1, tzinfo=UTC)
REGIONS = frozenset({"eu", "us"})
CATALOG = {
    "m": Model(id=1, name="m"),
    "hashed": Model(id=2, name="hashed", strategy="prefix_affinity"),
}


def run(
    key: KeyRecord,
    body: dict[str, object],
    *,
    region: str | None = None,
    path: str = "/v1/chat/completions",
) -> Allow | ApiError:
    return decide(
        key=key,
        method="POST",
        path=path,
        body=json.dumps(body).encode(),
        catalog=CATALOG,
        now=NOW,
        regions=REGIONS,
        requested_region=region,
    )


def chat(model: str = "m", text: str = "hi") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def cluster_of(decision: Allow | ApiError) -> str:
    assert isinstance(decision, Allow), decision
    headers = {
        h.header.key: h.header.value for h in responses.allowed(decision).ok_response.headers
    }
    return headers["x-crosslogic-cluster"]


def test_no_region_and_no_restriction_is_the_whole_pool() -> None:
    assert cluster_of(run(key_record(), chat())) == "model_1"


def test_a_named_region_is_preferred_and_validated() -> None:
    assert cluster_of(run(key_record(), chat(), region="eu")) == "model_1_in_eu"
    assert cluster_of(run(key_record(), chat(), region=" US ")) == "model_1_in_us"
    unknown = run(key_record(), chat(), region="mars")
    assert isinstance(unknown, ApiError)
    assert (unknown.status, unknown.code, unknown.param) == (
        400,
        "region_not_found",
        "crosslogic-region",
    )
    assert json.loads(unknown.body())["error"]["type"] == "invalid_request_error"


def test_a_key_with_allowed_regions_is_served_only_there() -> None:
    eu_only = key_record(allowed_regions=frozenset({"eu"}))
    assert cluster_of(run(eu_only, chat())) == "model_1_only_eu"
    assert cluster_of(run(eu_only, chat(), region="eu")) == "model_1_only_eu"
    refused = run(eu_only, chat(), region="us")
    assert isinstance(refused, ApiError)
    assert (refused.status, refused.code) == (403, "region_not_allowed")
    both = key_record(allowed_regions=frozenset({"us", "eu"}))
    assert cluster_of(run(both, chat())) == "model_1_only_eu"  # the first, alphabetically
    assert cluster_of(run(both, chat(), region="us")) == "model_1_only_us"
    nowhere = run(key_record(allowed_regions=frozenset()), chat())
    assert isinstance(nowhere, ApiError) and nowhere.code == "region_not_allowed"


def test_a_keys_default_region_is_preferred_unless_the_request_names_one() -> None:
    prefers_us = key_record(default_region="us")
    assert cluster_of(run(prefers_us, chat())) == "model_1_in_us"
    assert cluster_of(run(prefers_us, chat(), region="eu")) == "model_1_in_eu"
    both = key_record(allowed_regions=frozenset({"eu", "us"}), default_region="us")
    assert cluster_of(run(both, chat())) == "model_1_only_us"
    assert cluster_of(run(both, chat(), region="eu")) == "model_1_only_eu"


def test_the_client_errors_come_first() -> None:
    refused = run(key_record(allowed_models=frozenset({"hashed"})), chat(), region="mars")
    assert isinstance(refused, ApiError) and refused.code == "model_not_allowed"


def test_only_prefix_affinity_models_carry_a_prefix_hash() -> None:
    plain = run(key_record(), chat())
    assert isinstance(plain, Allow) and plain.prefix_hash is None
    hashed = run(key_record(), chat("hashed", "x" * 300))
    assert isinstance(hashed, Allow) and hashed.prefix_hash is not None
    same_prefix = run(key_record(), chat("hashed", "x" * 256 + "something else"))
    assert isinstance(same_prefix, Allow) and same_prefix.prefix_hash == hashed.prefix_hash
    other = run(key_record(), chat("hashed", "y" + "x" * 299))
    assert isinstance(other, Allow) and other.prefix_hash != hashed.prefix_hash
    with_header = responses.with_prefix_hash(responses.allowed(hashed), hashed.prefix_hash)
    headers = {h.header.key: h.header.value for h in with_header.ok_response.headers}
    assert headers["x-crosslogic-prefix-hash"] == hashed.prefix_hash


def test_the_prefix_spans_messages_and_every_endpoint() -> None:
    system = {"role": "system", "content": "s" * 200}
    one = placement.prefix_hash(
        "/v1/chat/completions", {"messages": [system, {"role": "user", "content": "a" * 100}]}
    )
    two = placement.prefix_hash(
        "/v1/chat/completions",
        {"messages": [system, {"role": "user", "content": [{"type": "text", "text": "a" * 60}]}]},
    )
    assert one == two  # 200 + 56 characters: the same prefix, however the content is shaped
    assert placement.prefix_hash("/v1/completions", {"prompt": "p" * 10}) != placement.prefix_hash(
        "/v1/completions", {"prompt": "q" * 10}
    )
    assert placement.prefix_hash("/v1/embeddings", {"input": ["a"]})


@given(
    st.recursive(
        st.none() | st.text(max_size=50) | st.integers(),
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(st.sampled_from(["content", "text", "role"]), inner, max_size=3)
        ),
        max_leaves=40,
    )
)
def test_any_body_shape_hashes_to_sixteen_hex_digits(shape: object) -> None:
    for endpoint in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        digest = placement.prefix_hash(
            endpoint, {"messages": shape, "prompt": shape, "input": shape}
        )
        assert len(digest) == 16 and int(digest, 16) >= 0
