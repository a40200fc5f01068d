"""The Envoy templates, the Lua scripts and the services agree on the names they share.

Pure: the config is rendered, never run; every name is compared with crosslogic/contracts/.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from crosslogic.billing.accesslog import parse_line
from crosslogic.contracts import access_log, counters, journal, metadata, routing
from crosslogic.envoy_config import render, template_dir
from crosslogic.extauthz import responses as authz
from crosslogic.extauthz.decision import Allow
from crosslogic.extauthz.http_answers import REMOVE_HEADER, HttpAnswers
from crosslogic.extauthz.verdict import Admitted, Refused, refused
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit import service as ratelimit
from crosslogic.ratelimit.config import LayerLimits, LimitRow
from crosslogic.ratelimit.gcra import interpret, limits_for
from crosslogic.settings import load
from crosslogic.xds.snapshot import ModelEntry
from crosslogic.xds.snapshot import build as build_snapshot
from tests.support.key_records import key_record
from tests.support.rls import rls_request

BOOT = "00000000000000ab"
PACKAGE = Path(routing.__file__).resolve().parents[1]
DYNAMIC = re.compile(r"%DYNAMIC_METADATA\(([^:()]+):([^)]+)\)%")


def config(ratelimit_at: str = "service", protocol: str = "grpc") -> dict[str, Any]:
    settings = load({"RATELIMIT_AT": ratelimit_at, "EXTAUTHZ_PROTOCOL": protocol})
    rendered: dict[str, Any] = yaml.safe_load(render(settings, boot_id=BOOT))
    return rendered


def walk(node: object) -> Iterator[dict[str, Any]]:
    """Every mapping in a parsed YAML document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def manager(cfg: dict[str, Any]) -> dict[str, Any]:
    listener = cfg["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def filters(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f["typed_config"] for f in manager(cfg)["http_filters"]}


def test_the_access_log_writes_exactly_the_fields_billing_reads() -> None:
    hcm = manager(config())
    (log,) = hcm["access_log"]
    written = log["typed_config"]["log_format"]["json_format"]
    expected = dict(access_log.FIELDS, **{access_log.BOOT_FIELD: BOOT})
    assert written == expected
    matcher = log["filter"]["metadata_filter"]["matcher"]
    assert (matcher["filter"], matcher["path"]) == (
        access_log.LOGGED_IF[0],
        [{"key": access_log.LOGGED_IF[1]}],
    )
    # billing's parser reads no field the log does not write
    source = (PACKAGE / "billing" / "accesslog.py").read_text()
    read = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "entry"
            and isinstance(node.slice, ast.Constant)
        ):
            read.add(node.slice.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            if isinstance(target, ast.Name) and target.id == "entry" and node.func.attr == "get":
                first = node.args[0]
                assert isinstance(first, ast.Constant)
                read.add(first.value)
    assert read and read <= set(access_log.FIELDS), read - set(access_log.FIELDS)


def test_every_metadata_key_the_config_names_is_in_the_contract() -> None:
    for ratelimit_at, protocol in itertools.product(("service", "authz"), ("grpc", "http")):
        settings = load({"RATELIMIT_AT": ratelimit_at, "EXTAUTHZ_PROTOCOL": protocol})
        text = render(settings, boot_id=BOOT)
        for namespace, key in DYNAMIC.findall(text):
            assert key in metadata.KEYS[namespace], (namespace, key)
    usage_rules = [
        rule["on_present"]
        for f in walk(config())
        if f.get("name") == "envoy.filters.http.json_to_metadata"
        for rule in f["typed_config"]["response_rules"]["rules"]
    ]
    assert usage_rules
    for rule in usage_rules:
        assert rule["metadata_namespace"] == metadata.USAGE
        assert rule["key"] in metadata.USAGE_KEYS


def test_rate_limit_descriptors_carry_what_the_service_reads() -> None:
    rl = filters(config("service"))["envoy.filters.http.ratelimit"]
    assert rl["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "ratelimit"
    (limit,) = rl["rate_limits"]
    keys = []
    for action in limit["actions"]:
        source = action["metadata"]
        assert source["metadata_key"]["key"] == metadata.AUTHZ
        assert source["metadata_key"]["path"] == [{"key": source["descriptor_key"]}]
        keys.append(source["descriptor_key"])
    assert tuple(keys) == metadata.DESCRIPTOR_KEYS
    assert "envoy.filters.http.ratelimit" not in filters(config("authz"))
    # the service reads every one of them
    values = {
        "tenant_id": "t",
        "environment_id": "e",
        "api_key_id": "a",
        "plan": "pro",
        "key_rpm": "7",
        "tokens": "42",
    }
    facts = ratelimit.request_facts(rls_request({key: values[key] for key in keys}))
    assert facts is not None
    identity, tokens = facts
    assert (identity.tenant_id, identity.environment_id, identity.api_key_id) == ("t", "e", "a")
    assert (identity.plan, identity.key_rpm, tokens) == ("pro", 7, 42)


def allowed_model_request() -> Allow:
    return Allow(
        key=key_record(rate_limit_rpm=7),
        model=routing.Model(id=3, name="m"),
        force_include_usage=True,
        stream=True,
        scan_usage=True,
        tokens=50,
        prompt_tokens=10,
    )


def test_ext_authz_writes_the_metadata_and_headers_envoy_reads() -> None:
    response = authz.allowed(allowed_model_request())
    written = set(json_format.MessageToDict(response.dynamic_metadata))
    assert written <= metadata.AUTHZ_KEYS
    cfg_text = render(load({"RATELIMIT_AT": "service"}), boot_id=BOOT)
    read = {key for ns, key in DYNAMIC.findall(cfg_text) if ns == metadata.AUTHZ}
    read |= set(metadata.DESCRIPTOR_KEYS) | {metadata.FORCE_INCLUDE_USAGE}
    # everything Envoy reads of ext_authz's is written (the reservation comes with limits)
    assert read - written == {metadata.TOKEN_RESERVATION}
    headers = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert headers == {routing.CLUSTER_HEADER: "model_3", routing.USAGE_HEADER: routing.USAGE_SCAN}
    models = authz.allowed(Allow(key=key_record(), model=None, force_include_usage=False))
    assert [h.header.key for h in models.ok_response.headers] == [
        routing.ALLOWED_MODELS_HEADER,
        routing.TENANT_HEADER,
        routing.ALLOWED_REGIONS_HEADER,
    ]


def test_routes_pick_the_cluster_ext_authz_names_and_xds_publishes() -> None:
    cfg = config()
    hcm = manager(cfg)
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    routed = [r for r in routes if "cluster_header" in r.get("route", {})]
    (model_route,) = routed
    assert model_route["route"]["cluster_header"] == routing.CLUSTER_HEADER
    assert model_route["match"]["headers"] == [
        {"name": routing.CLUSTER_HEADER, "present_match": True}
    ]
    assert set(model_route["request_headers_to_remove"]) == {
        routing.CLUSTER_HEADER,
        routing.USAGE_HEADER,
    }
    # prefix affinity: the route hashes the header ext_authz sets
    assert model_route["route"]["hash_policy"] == [
        {"header": {"header_name": routing.PREFIX_HASH_HEADER}}
    ]
    # the region a client names reaches ext_authz, which validates it
    authz = filters(cfg)["envoy.filters.http.ext_authz"]
    assert {"exact": routing.REGION_HEADER} in authz["allowed_headers"]["patterns"]
    assert not routing.REGION_HEADER.startswith(routing.INTERNAL_HEADER_PREFIX)
    # a client can never set them: Envoy strips the prefix before routing and ext_authz
    (mutation,) = hcm["early_header_mutation_extensions"]
    prefixes = [
        m["remove_on_match"]["key_matcher"]["prefix"]
        for m in mutation["typed_config"]["mutations"]
        if "remove_on_match" in m
    ]
    assert prefixes == [routing.INTERNAL_HEADER_PREFIX]
    for header in (
        routing.CLUSTER_HEADER,
        routing.USAGE_HEADER,
        routing.ALLOWED_MODELS_HEADER,
        routing.ALLOWED_REGIONS_HEADER,
        routing.PREFIX_HASH_HEADER,
        routing.TENANT_HEADER,
    ):
        assert header.startswith(routing.INTERNAL_HEADER_PREFIX)
    # the model's cluster: one name on both sides, and no static cluster can take it
    model = allowed_model_request().model
    assert model is not None
    snapshot = build_snapshot([ModelEntry(id=model.id, name=model.name)], [])
    assert set(snapshot.nodes_per_cluster) == {model.cluster} == {routing.model_cluster(3)}
    static = [c["name"] for c in cfg["static_resources"]["clusters"]]
    assert not [name for name in static if name.startswith(routing.MODEL_CLUSTER_PREFIX)]


def test_the_usage_filter_is_chosen_by_the_header_and_writes_the_usage_namespace() -> None:
    usage = filters(config())["crosslogic.usage"]
    tree = usage["xds_matcher"]["matcher_tree"]
    assert tree["input"]["typed_config"]["header_name"] == routing.USAGE_HEADER
    assert set(tree["exact_match_map"]["map"]) == set(routing.USAGE_SOURCES)
    lua = (template_dir() / "usage.lua").read_text()
    assert re.search(r'^local NS = "([^"]+)"$', lua, re.M)[1] == metadata.USAGE  # type: ignore[index]
    assert set(re.findall(r'md:set\(NS, "([a-z_]+)"', lua)) == metadata.USAGE_KEYS - {"streamed"}
    # streamed: on the request (a stream abandoned before any answer) and on the response
    assert set(re.findall(r'dynamicMetadata\(\):set\(NS, "([a-z_]+)"', lua)) == {"streamed"}
    assert re.findall(r'dynamicMetadata\(\):get\("([^"]+)"\)', lua) == [metadata.AUTHZ]
    assert re.findall(r'authz\["([a-z_]+)"\]', lua) == [metadata.FORCE_INCLUDE_USAGE]


def test_the_boot_id_reaches_ext_authz_billing_and_the_log_under_the_contracts_names() -> None:
    cfg = config()
    gateway = journal.DEFAULT_GATEWAY
    assert cfg["node"]["metadata"] == {
        journal.BOOT_METADATA_KEY: BOOT,
        journal.GATEWAY_METADATA_KEY: gateway,
    }
    grpc = filters(cfg)["envoy.filters.http.ext_authz"]["grpc_service"]
    assert grpc["initial_metadata"] == [
        {"key": journal.BOOT_HEADER, "value": BOOT},
        {"key": journal.GATEWAY_HEADER, "value": gateway},
    ]
    assert journal.journal_key(BOOT).startswith(journal.KEY_PREFIX)
    # the default gateway keeps the set of the time before gateways had names
    assert journal.boots_key(gateway) == journal.BOOTS_KEY
    assert journal.boots_key("gateway-2") == f"{journal.BOOTS_KEY}:gateway-2"


def test_counters_keep_one_layout_in_both_scripts_and_the_reservation_billing_settles() -> None:
    for script in (PACKAGE / "ratelimit" / "gcra.lua", PACKAGE / "billing" / "settle.lua"):
        (expression,) = re.findall(
            r"^local MAX_AHEAD = ([0-9 *]+?)\s*(?:--.*)?$", script.read_text(), re.M
        )
        assert eval(expression) == counters.MAX_AHEAD_US, script  # digits and '*' only
    row = LimitRow(scope="key", subject="k1", layer="key", tokens_per_minute=100)
    (limit,) = limits_for([LayerLimits("key", "k1", row)], tokens=30)
    assert limit.redis_key == counters.counter_key(
        layer="key", ident="k1", kind="tokens", period_s=60
    )
    assert limit.redis_key.startswith(counters.KEY_PREFIX)
    decision = interpret([limit], [1, 0, 0, 70, 18_000_000])
    reservation = decision.reservation()
    assert reservation is not None and set(reservation) == set(counters.Reservation.__annotations__)
    # through the metadata and the access log, billing settles exactly those counters
    response = ratelimit.to_response(decision)
    logged = json_format.MessageToDict(response.dynamic_metadata)[metadata.TOKEN_RESERVATION]
    line = {
        "request_id": "r1",
        "reservation": logged,
        "upstream_host": "10.0.0.1:8000",
        "status": 200,
        "prompt_tokens": 5,
        "completion_tokens": 5,
        "start_time": datetime(2026, 1, 1, tzinfo=UTC).strftime(access_log.START_TIME_FORMAT),
    }
    settlement = parse_line(json.dumps(line).encode()).settlement
    assert settlement is not None
    assert settlement.counters == ((limit.redis_key, limit.interval_us),)
    assert settlement.delta_tokens == 10 - 30
    # ext_authz over HTTP: the reservation reaches the log as a header's string, JSON
    answer = HttpAnswers().answer(Admitted(allowed_model_request(), None, decision)).decode()
    (header,) = [h for h in answer.split("\r\n") if h.startswith(metadata.TOKEN_RESERVATION)]
    del line["reservation"]
    line["authz_reservation"] = header.split(": ", 1)[1]
    assert parse_line(json.dumps(line).encode()).settlement == settlement


def ext_authz(protocol: str) -> dict[str, Any]:
    return filters(config("authz", protocol))["envoy.filters.http.ext_authz"]


def extauthz_cluster(cfg: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "extauthz"]
    options: dict[str, Any] = cluster["typed_extension_protocol_options"]
    return options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]


def matches(patterns: list[dict[str, str]], name: str) -> bool:
    return any(
        name == p.get("exact") or ("prefix" in p and name.startswith(p["prefix"])) for p in patterns
    )


def test_both_protocols_carry_the_same_request_and_settings() -> None:
    grpc, http = ext_authz("grpc"), ext_authz("http")
    shared = ("failure_mode_allow", "status_on_error", "allowed_headers", "clear_route_cache")
    assert {k: grpc[k] for k in shared} == {k: http[k] for k in shared}
    assert grpc["failure_mode_allow"] is False and grpc["status_on_error"] == {"code": 503}
    assert grpc["clear_route_cache"] is True
    # the body: as bytes in the gRPC message; as the HTTP request's own body
    assert grpc["with_request_body"] == dict(http["with_request_body"], pack_as_bytes=True)
    boot = [journal.BOOT_HEADER, BOOT]
    origin = grpc["grpc_service"]["initial_metadata"]
    added = http["http_service"]["authorization_request"]["headers_to_add"]
    for sent in (origin, added):
        assert [[h["key"], h["value"]] for h in sent] == [boot, [journal.GATEWAY_HEADER, "gateway"]]
    service = http["http_service"]
    assert service["server_uri"]["cluster"] == "extauthz"
    assert service["server_uri"]["timeout"] == grpc["grpc_service"]["timeout"]
    assert service["retry_policy"]["retry_on"] == "connect-failure,reset"
    assert (
        "http2_protocol_options"
        in extauthz_cluster(config("authz", "grpc"))["explicit_http_config"]
    )
    assert (
        "http_protocol_options" in extauthz_cluster(config("authz", "http"))["explicit_http_config"]
    )


def test_over_http_envoy_takes_every_header_and_metadata_key_ext_authz_answers() -> None:
    response = ext_authz("http")["http_service"]["authorization_response"]
    upstream = response["allowed_upstream_headers"]["patterns"]
    to_metadata = response["dynamic_metadata_from_headers"]["patterns"]
    assert {p["exact"] for p in to_metadata} == metadata.AUTHZ_KEYS
    on_success = response["allowed_client_headers_on_success"]["patterns"]
    on_denial = response["allowed_client_headers"]["patterns"]
    row = LimitRow(scope="key", subject="k1", layer="key", tokens_per_minute=100)
    limits = interpret(limits_for([LayerLimits("key", "k1", row)], tokens=30), [1, 0, 0, 70, 9])
    assert limits.headers() and limits.reservation()
    answers = HttpAnswers()
    for decision in (
        allowed_model_request(),
        Allow(key=key_record(), model=None, force_include_usage=False),
    ):
        text = answers.answer(Admitted(decision, "abc", limits)).decode()
        head = [line.split(": ", 1) for line in text.split("\r\n")[1:] if ": " in line]
        for name, _ in head:
            if name.startswith(routing.INTERNAL_HEADER_PREFIX):
                assert matches(upstream, name), name
            elif name in metadata.AUTHZ_KEYS:
                assert matches(to_metadata, name) and not matches(upstream, name)
            elif name.startswith("x-ratelimit-"):
                assert matches(on_success, name)
            else:
                assert name in (REMOVE_HEADER, "content-length"), name
        assert [REMOVE_HEADER, "authorization"] in head
    quota = refused(authz_decision_error("insufficient_quota"), [("retry-after", "1")])
    for refusal in (
        quota,
        Refused(authz_decision_error("x"), (("x-ratelimit-limit-requests", "1"),)),
    ):
        text = answers.answer(refusal).decode()
        names = [line.split(": ", 1)[0] for line in text.split("\r\n\r\n")[0].split("\r\n")[1:]]
        for name in names:
            assert name == "content-length" or matches(on_denial, name), name


def authz_decision_error(code: str) -> Any:
    return ApiError(429, "no", code, code)
