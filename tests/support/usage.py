"""Usage rows written straight into the stack's database, for aggregation and reports."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from crosslogic.stack import Stack
from tests.support.db import run_db
from tests.support.system import MODEL
from tests.support.tenants import fresh_tenant, key_in

PAST = datetime(2020, 1, 1, tzinfo=UTC)


def unused_hour() -> datetime:
    """A whole UTC hour of 2020-2031 that no other test writes usage into (by chance)."""
    return PAST + timedelta(hours=random.randrange(100_000))


@dataclass(frozen=True)
class Payer:
    """A new tenant, its environment and key, and the stack's model."""

    tenant_id: str
    environment_id: str
    api_key_id: str
    key: str  # the key's plaintext, for requests through Envoy
    model_id: int


def payer(stack: Stack) -> Payer:
    tenant, env = fresh_tenant(stack)
    key = key_in(stack, tenant, env)
    model = run_db(stack, "SELECT id FROM models WHERE name = $1", MODEL)[0]["id"]
    return Payer(tenant, env, key.api_key_id, key.plaintext, model)


def add_usage(
    stack: Stack,
    who: Payer,
    hour: datetime,
    *,
    count: int,
    prompt: int = 10,
    completion: int = 20,
    cost: Decimal = Decimal("0.0000012345"),
    region: str | None = None,
) -> None:
    """``count`` usage rows of ``who`` spread over ``hour`` (new request ids)."""
    run_db(
        stack,
        "INSERT INTO usage_records (request_id, tenant_id, environment_id, api_key_id, model_id,"
        " endpoint, prompt_tokens, completion_tokens, cost_usd, status_code, started_at,"
        " duration_ms, region_code)"
        " SELECT gen_random_uuid()::text, $1, $2, $3, $4, '/v1/chat/completions', $5, $6, $7,"
        " 200, $8::timestamptz + (i % 3600) * interval '1 second', 5, $10"
        " FROM generate_series(1, $9) AS i",
        who.tenant_id,
        who.environment_id,
        who.api_key_id,
        who.model_id,
        prompt,
        completion,
        cost,
        hour,
        count,
        region,
    )
