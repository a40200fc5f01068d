"""The admin API's OpenAPI document: well formed, checked against the app's router and
against the request parsers (so neither can drift from the code), served as JSON."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web

from crosslogic.accounts import credits, plans
from crosslogic.accounts import requests as parse
from crosslogic.admin import openapi
from crosslogic.admin.app import make_app
from crosslogic.admin.auth import NODE_ROUTES, Access
from crosslogic.billing.customers import customer_change
from crosslogic.catalog import requests as catalog
from crosslogic.errors import Invalid
from crosslogic.fleet.requests import parse_heartbeat, parse_registration, parse_token_spec
from crosslogic.openai_errors import ApiError
from crosslogic.orchestrator.pools import PoolSpec, pool_spec, updated
from crosslogic.ratelimit.config import parse_limit
from crosslogic.settings import Settings

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref``s until a node that is not a reference."""
    while isinstance(node, dict) and "$ref" in node:
        pointer = str(node["$ref"])
        assert pointer.startswith("#/"), pointer
        node = doc
        for part in pointer[2:].split("/"):
            node = node[part]
    return node


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.document()


def test_openapi_document_is_well_formed(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    # YAML traps: an unquoted `null` in a type list, a colon in a flow-style description
    assert all(node is not None for node in walk(doc))
    for node in walk(doc):
        if isinstance(node, dict) and "$ref" in node:
            resolve(doc, node)  # a dangling reference raises KeyError
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations(doc):
        assert operation["responses"], path
        declared = {
            resolve(doc, p)["name"]
            for p in doc["paths"][path].get("parameters", []) + operation.get("parameters", [])
            if resolve(doc, p)["in"] == "path"
        }
        assert declared == set(re.findall(r"\{(\w+)\}", path)), path
        if "requestBody" in operation:
            schema = resolve(doc, operation["requestBody"]["content"]["application/json"]["schema"])
            assert schema["additionalProperties"] is False, path
        if path.startswith("/admin/") and path != openapi.PATH:
            security = operation.get("security", doc["security"])
            assert security == SECURITY.get((method.upper(), path), OPERATOR), path
            assert "401" in operation["responses"], path


OPERATOR = [{"operatorToken": []}]
# the routes nodes call open with the fleet's own secrets (crosslogic.admin.auth)
SECURITY = {
    route: {
        Access.REGISTRATION: [{"registrationToken": []}],
        Access.NODE: [{"nodeCredential": []}],
        Access.NODE_OR_OPERATOR: [{"nodeCredential": []}, *OPERATOR],
    }[access]
    for route, access in NODE_ROUTES.items()
}


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_every_route_of_the_admin_app_is_documented(doc: dict[str, Any]) -> None:
    app = make_app(Settings())
    if ("get", openapi.PATH) not in served_routes(app):
        openapi.add_route(app)  # until make_app registers it itself
    served = served_routes(app)
    documented = {(method, path) for path, method, _ in operations(doc)}
    assert served - documented == set(), "routes missing from openapi.yaml"
    assert documented - served == set(), "openapi.yaml documents routes that do not exist"


NOW = datetime.now(UTC)
PARSERS: dict[str, Callable[[Any], object]] = {
    "TenantCreate": parse.tenant_name,
    "TenantStatusChange": lambda body: parse.status_change(body, ("active", "suspended")),
    "EnvironmentCreate": parse.environment_name,
    "EnvironmentStatusChange": lambda body: parse.status_change(body, ("active", "disabled")),
    "KeyCreate": lambda body: parse.key_spec(body, now=NOW),
    "KeyRotate": parse.grace_seconds,
    "NodeRegistration": parse_registration,
    "NodeHeartbeat": parse_heartbeat,
    "NodeTokenCreate": parse_token_spec,
    "LimitSet": parse_limit,
    "ModelCreate": catalog.model_create,
    "ModelUpdate": catalog.model_update,
    "ModelPriceAdd": lambda body: catalog.price_version(body, now=NOW),
    "RegionCreate": catalog.region_create,
    "RegionUpdate": catalog.region_update,
    "TenantPriceSet": lambda body: catalog.tenant_price(body, now=NOW),
    "PlanSet": plans.plan_spec,
    "BillingChange": plans.billing_change,
    "CreditGrantCreate": lambda body: credits.grant_spec(body, now=NOW),
    "StripeCustomerChange": customer_change,
    "PoolCreate": pool_spec,
    "PoolUpdate": lambda body: updated(A_POOL, body),
}
A_POOL = PoolSpec(
    name="p",
    model="m",
    accelerator="A100",
    gpu_count=1,
    min_replicas=1,
    max_replicas=1,
    replica_tokens_per_minute=1000,
)
POOL = {"name": "llama", "model": "m", "accelerator": "A100", "replica_tokens_per_minute": 9}
PRICES = {"prompt_per_mtok": "0.2", "completion_per_mtok": 0.6}
LATER = "2999-01-01T00:00:00Z"
NODE = {"model": "m", "address": "10.0.0.1", "port": 8000}
TENANT_RPM = {"scope": "tenant", "subject": "t1", "requests_per_minute": 60}


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        ("TenantCreate", {"name": "acme"}),
        ("TenantCreate", {"name": "acme", "plan": ""}),
        ("TenantCreate", {"name": "a" * 200, "plan": "pro"}),
        ("TenantCreate", {"name": "a" * 201}),
        ("TenantCreate", {"name": ""}),
        ("TenantCreate", {"name": 5}),
        ("TenantCreate", {"name": "acme", "plan": None}),
        ("TenantCreate", {"name": "acme", "colour": "red"}),
        ("TenantCreate", {}),
        ("TenantStatusChange", {"status": "suspended"}),
        ("TenantStatusChange", {"status": "disabled"}),
        ("TenantStatusChange", {"status": "active", "reason": "x"}),
        ("EnvironmentStatusChange", {"status": "disabled"}),
        ("EnvironmentStatusChange", {}),
        ("EnvironmentCreate", {"name": "prod"}),
        ("EnvironmentCreate", {"name": "my_env-2"}),
        ("EnvironmentCreate", {"name": "a" * 63}),
        ("EnvironmentCreate", {"name": "a" * 64}),
        ("EnvironmentCreate", {"name": "Prod"}),
        ("EnvironmentCreate", {"name": "-prod"}),
        ("EnvironmentCreate", {"name": "prod", "plan": "x"}),
        ("KeyCreate", {}),
        ("KeyCreate", {"name": "ci", "expires_at": None, "allowed_models": None}),
        ("KeyCreate", {"name": None}),
        ("KeyCreate", {"name": "n" * 201}),
        ("KeyCreate", {"expires_at": "2999-01-01T00:00:00Z"}),
        ("KeyCreate", {"allowed_models": ["a", "a"], "allowed_regions": ["eu"]}),
        ("KeyCreate", {"allowed_models": []}),
        ("KeyCreate", {"allowed_models": [""]}),
        ("KeyCreate", {"allowed_regions": ["r" * 201]}),
        ("KeyCreate", {"allowed_regions": "eu"}),
        ("KeyCreate", {"rate_limit_rpm": 1}),
        ("KeyCreate", {"rate_limit_rpm": 10**9}),
        ("KeyCreate", {"rate_limit_rpm": 10**9 + 1}),
        ("KeyCreate", {"rate_limit_rpm": 0}),
        ("KeyCreate", {"rate_limit_rpm": "60"}),
        ("KeyCreate", {"rate_limit_rpm": True}),
        ("KeyCreate", {"key": "clk_x"}),
        ("KeyRotate", {}),
        ("KeyRotate", {"grace_seconds": 0}),
        ("KeyRotate", {"grace_seconds": 30 * 86400}),
        ("KeyRotate", {"grace_seconds": 30 * 86400 + 1}),
        ("KeyRotate", {"grace_seconds": -1}),
        ("KeyRotate", {"grace_seconds": "60"}),
        ("KeyRotate", {"grace": 60}),
        ("NodeRegistration", NODE),
        ("NodeRegistration", {**NODE, "node_id": "gpu-1.a_b", "gpu_type": "", "region": "eu"}),
        ("NodeRegistration", {**NODE, "node_id": None}),
        ("NodeRegistration", {**NODE, "node_id": ""}),
        ("NodeRegistration", {**NODE, "node_id": "gpu 1"}),
        ("NodeRegistration", {**NODE, "port": 0}),
        ("NodeRegistration", {**NODE, "port": 65536}),
        ("NodeRegistration", {**NODE, "port": "8000"}),
        ("NodeRegistration", {**NODE, "provider": ""}),
        ("NodeRegistration", {**NODE, "gpu_type": None}),
        ("NodeRegistration", {"model": "m", "port": 8000}),
        ("NodeRegistration", {**NODE, "colour": "red"}),
        ("NodeRegistration", {**NODE, "zone": "eu-west-1a", "gpu_count": 8, "capacity": 512}),
        ("NodeRegistration", {**NODE, "spot": True, "gpu_count": 0, "capacity": 1}),
        ("NodeRegistration", {**NODE, "zone": "z" * 100, "gpu_count": 1024}),
        ("NodeRegistration", {**NODE, "zone": "z" * 101}),
        ("NodeRegistration", {**NODE, "zone": None}),
        ("NodeRegistration", {**NODE, "gpu_count": 1025}),
        ("NodeRegistration", {**NODE, "gpu_count": -1}),
        ("NodeRegistration", {**NODE, "capacity": 0}),
        ("NodeRegistration", {**NODE, "capacity": 1_000_001}),
        ("NodeRegistration", {**NODE, "capacity": "8"}),
        ("NodeRegistration", {**NODE, "capacity": True}),
        ("NodeRegistration", {**NODE, "spot": "yes"}),
        ("NodeRegistration", {**NODE, "spot": 1}),
        ("NodeHeartbeat", {}),
        ("NodeHeartbeat", {"requests_running": 3, "kv_cache_usage_perc": 1, "status": "ok"}),
        ("NodeHeartbeat", {"kv_cache_usage_perc": 1.5}),
        ("NodeHeartbeat", {"requests_waiting": -1}),
        ("NodeHeartbeat", {"requests_running": 1.5}),
        ("NodeHeartbeat", {"load": 1}),
        ("NodeTokenCreate", {"name": "eu-spot"}),
        ("NodeTokenCreate", {"name": "eu", "provider": "aws", "region": "eu-west"}),
        ("NodeTokenCreate", {"name": "any", "provider": None, "region": None}),
        ("NodeTokenCreate", {"name": "n" * 200}),
        ("NodeTokenCreate", {"name": "n" * 201}),
        ("NodeTokenCreate", {"name": ""}),
        ("NodeTokenCreate", {}),
        ("NodeTokenCreate", {"name": "x", "provider": ""}),
        ("NodeTokenCreate", {"name": "x", "region": 5}),
        ("NodeTokenCreate", {"name": "x", "token": "clrt_x"}),
        ("LimitSet", TENANT_RPM),
        ("LimitSet", {**TENANT_RPM, "layer": "tenant", "fail_mode": "closed"}),
        ("LimitSet", {"scope": "global", "requests_per_second": 100}),
        ("LimitSet", {"scope": "global", "subject": "", "layer": "global", "tokens_per_day": 1}),
        ("LimitSet", {"scope": "global", "subject": "x", "requests_per_second": 1}),
        ("LimitSet", {"scope": "global", "layer": "tenant", "requests_per_second": 1}),
        ("LimitSet", {"scope": "plan", "subject": "pro", "layer": "key", "tokens_per_minute": 9}),
        ("LimitSet", {"scope": "plan", "subject": "pro", "tokens_per_minute": 9}),
        ("LimitSet", {"scope": "plan", "subject": "pro", "layer": "global", "tokens_per_day": 9}),
        ("LimitSet", {"scope": "plan", "layer": "tenant", "tokens_per_day": 9}),
        ("LimitSet", {"scope": "plan", "subject": "", "layer": "tenant", "tokens_per_day": 9}),
        ("LimitSet", {"scope": "key", "subject": "k", "requests_per_second": 10**12}),
        ("LimitSet", {"scope": "key", "subject": "k", "requests_per_second": 10**12 + 1}),
        ("LimitSet", {"scope": "key", "subject": "s" * 200, "requests_per_second": 1}),
        ("LimitSet", {"scope": "key", "subject": "s" * 201, "requests_per_second": 1}),
        ("LimitSet", {"scope": "key", "requests_per_second": 1}),
        ("LimitSet", {"scope": "key", "subject": None, "requests_per_second": 1}),
        ("LimitSet", {"scope": "environment", "subject": "e", "layer": "key", "tokens_per_day": 1}),
        ("LimitSet", {"scope": "environment", "subject": "e", "tokens_per_day": 1, "rpm": 1}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": 0}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": -5}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": "60"}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": True}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": None}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": None, "tokens_per_day": 5}),
        ("LimitSet", {**TENANT_RPM, "requests_per_second": None}),
        ("LimitSet", {**TENANT_RPM, "fail_mode": "sometimes"}),
        ("LimitSet", {**TENANT_RPM, "fail_mode": None}),
        ("LimitSet", {**TENANT_RPM, "scope": "region"}),
        ("LimitSet", {"subject": "t1", "requests_per_minute": 60}),
        ("ModelCreate", {"name": "m"}),
        ("ModelCreate", {"name": "m", "family": "llama", "context_length": 131072, **PRICES}),
        ("ModelCreate", {"name": "m", **PRICES, "embedding_per_mtok": "0.01"}),
        ("ModelCreate", {"name": "m", "prompt_per_mtok": 1}),
        ("ModelCreate", {"name": "m", "embedding_per_mtok": 1}),
        ("ModelCreate", {"name": "m", "context_length": 0}),
        ("ModelCreate", {"name": "m", "context_length": 10**7 + 1}),
        ("ModelCreate", {"name": ""}),
        ("ModelCreate", {"name": "m", "price": 1}),
        ("ModelCreate", {"name": "m", **PRICES, "prompt_per_mtok": -1}),
        ("ModelCreate", {"name": "m", **PRICES, "prompt_per_mtok": "1e3"}),
        ("ModelCreate", {"name": "m", **PRICES, "prompt_per_mtok": "0.1234567"}),
        ("ModelCreate", {"name": "m", **PRICES, "prompt_per_mtok": "1000000"}),
        ("ModelCreate", {"name": "m", **PRICES, "prompt_per_mtok": 999999.999999}),
        ("ModelCreate", {"name": "m", **PRICES, "prompt_per_mtok": True}),
        ("ModelCreate", {"name": "m", **PRICES, "prompt_per_mtok": None}),
        ("ModelUpdate", {"status": "deprecated"}),
        ("ModelUpdate", {"status": "active", "context_length": 4096}),
        ("ModelUpdate", {"status": "retired"}),
        ("ModelUpdate", {"context_length": "4096"}),
        ("ModelUpdate", {}),
        ("ModelUpdate", {"name": "x"}),
        ("ModelPriceAdd", PRICES),
        ("ModelPriceAdd", {**PRICES, "embedding_per_mtok": 0, "effective_at": LATER}),
        ("ModelPriceAdd", {"prompt_per_mtok": 1}),
        ("ModelPriceAdd", {**PRICES, "model": "m"}),
        ("RegionCreate", {"code": "eu-west", "name": "EU West"}),
        ("RegionCreate", {"code": "eu", "name": "EU", "provider": "aws", "price_multiplier": 1.25}),
        ("RegionCreate", {"code": "eu", "name": "EU", "price_multiplier": "0.0001"}),
        ("RegionCreate", {"code": "eu", "name": "EU", "price_multiplier": 0}),
        ("RegionCreate", {"code": "eu", "name": "EU", "price_multiplier": -1}),
        ("RegionCreate", {"code": "eu", "name": "EU", "price_multiplier": 10000}),
        ("RegionCreate", {"code": "EU", "name": "EU"}),
        ("RegionCreate", {"code": "eu"}),
        ("RegionCreate", {"code": "eu", "name": "EU", "zone": "a"}),
        ("RegionUpdate", {"price_multiplier": "1.5"}),
        ("RegionUpdate", {"name": "Europe"}),
        ("RegionUpdate", {"price_multiplier": "1.12345"}),
        ("RegionUpdate", {}),
        ("RegionUpdate", {"code": "x"}),
        ("TenantPriceSet", {"model": "m", **PRICES}),
        ("TenantPriceSet", {"model": "m", "discount_percent": 12.5, "effective_at": LATER}),
        ("TenantPriceSet", {"model": "m", "discount_percent": "100"}),
        ("TenantPriceSet", {"model": "m", "discount_percent": 100.5}),
        ("TenantPriceSet", {"model": "m", "discount_percent": 0}),
        ("TenantPriceSet", {"model": "m", "discount_percent": "12.345"}),
        ("TenantPriceSet", {"model": "m", "discount_percent": 10, **PRICES}),
        ("TenantPriceSet", {"model": "m"}),
        ("TenantPriceSet", {**PRICES}),
        ("TenantPriceSet", {"model": "m", **PRICES, "kind": "contract"}),
        ("PlanSet", {}),
        ("PlanSet", {"billing_mode": "prepaid", "monthly_allowance_tokens": 1000}),
        ("PlanSet", {"monthly_allowance_usd": "5.25", "description": "d"}),
        ("PlanSet", {"monthly_allowance_usd": 5}),
        ("PlanSet", {"monthly_allowance_usd": 5.5}),
        ("PlanSet", {"monthly_allowance_usd": "0"}),
        ("PlanSet", {"monthly_allowance_usd": "0.00"}),
        ("PlanSet", {"monthly_allowance_usd": "1e3"}),
        ("PlanSet", {"monthly_allowance_usd": "0.00000000001"}),
        ("PlanSet", {"monthly_allowance_usd": None, "monthly_allowance_tokens": None}),
        ("PlanSet", {"monthly_allowance_usd": "1", "monthly_allowance_tokens": 1}),
        ("PlanSet", {"monthly_allowance_tokens": 0}),
        ("PlanSet", {"monthly_allowance_tokens": True}),
        ("PlanSet", {"billing_mode": "weekly"}),
        ("PlanSet", {"description": "x" * 501}),
        ("PlanSet", {"price": 1}),
        ("BillingChange", {}),
        ("BillingChange", {"plan": "free"}),
        ("BillingChange", {"plan": "Free"}),
        ("BillingChange", {"plan": None}),
        ("BillingChange", {"billing_mode": None, "monthly_spend_cap_usd": None}),
        ("BillingChange", {"billing_mode": "prepaid", "monthly_spend_cap_usd": "100"}),
        ("BillingChange", {"monthly_spend_cap_usd": -1}),
        ("BillingChange", {"monthly_spend_cap_usd": 0}),
        ("BillingChange", {"status": "active"}),
        ("CreditGrantCreate", {"amount_usd": "10.50"}),
        ("CreditGrantCreate", {"amount_usd": 10, "note": "welcome"}),
        ("CreditGrantCreate", {"amount_usd": "2099-01-01"}),
        ("CreditGrantCreate", {"amount_usd": 10.5}),
        ("CreditGrantCreate", {"amount_usd": "9999999999.9999999999"}),
        ("CreditGrantCreate", {"amount_usd": "10000000000"}),
        ("CreditGrantCreate", {"amount_usd": 10**10}),
        ("CreditGrantCreate", {"amount_usd": "-1"}),
        ("CreditGrantCreate", {"note": "no amount"}),
        ("CreditGrantCreate", {"amount_usd": "1", "note": "x" * 501}),
        ("CreditGrantCreate", {"amount_usd": "1", "currency": "eur"}),
        ("StripeCustomerChange", {"stripe_customer_id": "cus_NffrFeUfNV2Hib"}),
        ("StripeCustomerChange", {"stripe_customer_id": None}),
        ("StripeCustomerChange", {}),
        ("StripeCustomerChange", {"stripe_customer_id": ""}),
        ("StripeCustomerChange", {"stripe_customer_id": "acme"}),
        ("StripeCustomerChange", {"stripe_customer_id": "cus_a b"}),
        ("StripeCustomerChange", {"stripe_customer_id": 5}),
        ("StripeCustomerChange", {"stripe_customer_id": "cus_1", "plan": "pro"}),
        ("PoolCreate", {**POOL, "replicas": 2}),
        ("PoolCreate", {**POOL, "min_replicas": 1, "max_replicas": 4, "replicas": None}),
        ("PoolCreate", {**POOL, "min_replicas": 0, "max_replicas": 0, "gpu_count": 8}),
        ("PoolCreate", {**POOL, "replicas": 1, "clouds": ["aws", "gcp"], "spot": True}),
        ("PoolCreate", {**POOL, "replicas": 1, "clouds": ["aws"], "cloud_regions": ["us-east-1"]}),
        ("PoolCreate", {**POOL, "replicas": 1, "clouds": None, "cloud_regions": None}),
        ("PoolCreate", {**POOL, "replicas": 1, "region": "eu-west", "model_source": "org/m"}),
        ("PoolCreate", {**POOL, "replicas": 1, "vllm_args": ["--max-model-len", "8192"]}),
        ("PoolCreate", {**POOL, "replicas": 1, "on_demand_fallback": False}),
        ("PoolCreate", {**POOL, "replicas": 1, "scale_up_cooldown_s": 0}),
        ("PoolCreate", {**POOL, "replicas": 1, "scale_down_cooldown_s": 86401}),
        ("PoolCreate", {**POOL, "replicas": 1, "cloud_regions": ["us-east-1"]}),
        ("PoolCreate", {**POOL, "replicas": 1, "clouds": ["aws", "gcp"], "cloud_regions": ["x"]}),
        ("PoolCreate", {**POOL, "replicas": 1, "clouds": ["aws", "aws"]}),
        ("PoolCreate", {**POOL, "replicas": 1, "clouds": ["mars"]}),
        ("PoolCreate", {**POOL, "replicas": 1, "clouds": []}),
        ("PoolCreate", {**POOL, "replicas": 1, "min_replicas": 1, "max_replicas": 2}),
        ("PoolCreate", {**POOL, "min_replicas": 1}),
        ("PoolCreate", POOL),
        ("PoolCreate", {**POOL, "replicas": 101}),
        ("PoolCreate", {**POOL, "replicas": -1}),
        ("PoolCreate", {**POOL, "replicas": "2"}),
        ("PoolCreate", {**POOL, "replicas": True}),
        ("PoolCreate", {**POOL, "replicas": 1, "gpu_count": 0}),
        ("PoolCreate", {**POOL, "replicas": 1, "gpu_count": 17}),
        ("PoolCreate", {**POOL, "replicas": 1, "name": "Llama"}),
        ("PoolCreate", {**POOL, "replicas": 1, "name": "llama-"}),
        ("PoolCreate", {**POOL, "replicas": 1, "name": "l" * 32}),
        ("PoolCreate", {**POOL, "replicas": 1, "name": "l" * 33}),
        ("PoolCreate", {**POOL, "replicas": 1, "accelerator": "A100:8"}),
        ("PoolCreate", {**POOL, "replicas": 1, "replica_tokens_per_minute": 0}),
        ("PoolCreate", {**POOL, "replicas": 1, "spot": "yes"}),
        ("PoolCreate", {**POOL, "replicas": 1, "vllm_args": "--enforce-eager"}),
        ("PoolCreate", {**POOL, "replicas": 1, "vllm_args": [""]}),
        ("PoolCreate", {**POOL, "replicas": 1, "region": "EU"}),
        ("PoolCreate", {**POOL, "replicas": 1, "colour": "red"}),
        ("PoolCreate", {"name": "llama", "replicas": 1}),
        ("PoolUpdate", {"replicas": 3}),
        ("PoolUpdate", {"min_replicas": 0, "max_replicas": 5}),
        ("PoolUpdate", {"spot": True, "vllm_args": []}),
        ("PoolUpdate", {"model": "other", "region": None}),
        ("PoolUpdate", {}),
        ("PoolUpdate", {"name": "other"}),
        ("PoolUpdate", {"gpu_count": 0}),
        ("PoolUpdate", {"replicas": 1000}),
    ],
)
def test_request_schemas_agree_with_the_parsers(
    doc: dict[str, Any], schema: str, body: dict[str, Any]
) -> None:
    validator = jsonschema.Draft202012Validator(
        {"components": doc["components"], "$ref": f"#/components/schemas/{schema}"}
    )
    try:
        accepted = not isinstance(PARSERS[schema](body), ApiError)
    except Invalid:
        accepted = False
    assert validator.is_valid(body) == accepted


def test_document_is_served_as_json(doc: dict[str, Any]) -> None:
    async def fetch() -> tuple[int, Any]:
        app = web.Application()
        openapi.add_route(app)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}{openapi.PATH}") as response,
            ):
                return response.status, await response.json()
        finally:
            await runner.cleanup()

    assert asyncio.run(fetch()) == (200, doc)
