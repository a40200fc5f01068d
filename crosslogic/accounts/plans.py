"""Plans and a tenant's billing settings: validation (pure) and audited operations.

A plan names its tenants' default rate limits (``rate_limits`` rows of scope ``plan``, set
with ``crosslogic limits``), a monthly free allowance (tokens or USD) and the billing mode of
its tenants. A tenant's plan, billing mode and monthly spend cap are changed here; each change
recomputes the tenant's quota in the same transaction and NOTIFYs ext_authz, which caches the
plan and the quota with the tenant's keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.accounts.records import announce, get
from crosslogic.accounts.requests import json_object
from crosslogic.billing import quota, quota_store
from crosslogic.db.rows import as_dict
from crosslogic.errors import Invalid, NotFound

PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_USD = re.compile(r"^\d{1,10}(\.\d{1,10})?$")  # numeric(20, 10)
MAX_TOKENS = 10**15
_PLAN = (
    "name, description, billing_mode, monthly_allowance_tokens, "
    "monthly_allowance_usd::text, created_at, updated_at"
)
_BILLING = (
    "id::text, name, status, plan, billing_mode, monthly_spend_cap_usd::text, "
    "stripe_customer_id, quota_reason, quota_exhausted_at, updated_at"
)


@dataclass(frozen=True)
class PlanSpec:
    description: str = ""
    billing_mode: str = quota.POSTPAID
    monthly_allowance_tokens: int | None = None
    monthly_allowance_usd: Decimal | None = None


# -- pure validation, shared by the admin API and the command line ------------------------


def plan_name(text: str) -> str:
    if not isinstance(text, str) or not PLAN_NAME.fullmatch(text):
        raise Invalid(f"'name' must match {PLAN_NAME.pattern}.", param="name")
    return text


def usd(value: Any, *, field: str) -> Decimal:
    """A positive USD amount: a decimal string ("12.50") or an integer, never a float."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _USD.fullmatch(value):
        raise Invalid(
            f"'{field}' must be a positive amount in USD below 10^10, as a decimal string like "
            '"12.50" (at most 10 decimals) or an integer.',
            param=field,
        )
    try:
        amount = Decimal(value)
    except InvalidOperation:  # pragma: no cover (the pattern admits only numbers)
        raise Invalid(f"'{field}' is not a number.", param=field) from None
    if amount <= 0:
        raise Invalid(f"'{field}' must be above 0.", param=field)
    return amount


def _mode(value: Any, *, field: str = "billing_mode") -> str:
    if value not in quota.MODES:
        raise Invalid(f"'{field}' must be one of {', '.join(quota.MODES)}.", param=field)
    return str(value)


def plan_spec(body: Any) -> PlanSpec:
    """The whole plan (PUT): fields not given take their defaults."""
    fields = {"description", "billing_mode", "monthly_allowance_tokens", "monthly_allowance_usd"}
    body = json_object(body, fields)
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise Invalid(
            "'description' must be a string of at most 500 characters.", param="description"
        )
    tokens = body.get("monthly_allowance_tokens")
    if tokens is not None and (
        not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 < tokens <= MAX_TOKENS
    ):
        raise Invalid(
            "'monthly_allowance_tokens' must be a positive integer or null.",
            param="monthly_allowance_tokens",
        )
    raw_usd = body.get("monthly_allowance_usd")
    dollars = None if raw_usd is None else usd(raw_usd, field="monthly_allowance_usd")
    if tokens is not None and dollars is not None:
        raise Invalid(
            "A plan's allowance is in tokens or in USD, not both.", param="monthly_allowance_usd"
        )
    return PlanSpec(
        description=description,
        billing_mode=_mode(body.get("billing_mode", quota.POSTPAID)),
        monthly_allowance_tokens=tokens,
        monthly_allowance_usd=dollars,
    )


def billing_change(body: Any) -> dict[str, Any]:
    """A tenant's billing settings to change (PATCH): only the fields given; null clears
    ``billing_mode`` (back to the plan's) and ``monthly_spend_cap_usd`` (no cap)."""
    body = json_object(body, {"plan", "billing_mode", "monthly_spend_cap_usd"})
    if not body:
        raise Invalid("Give at least one of plan, billing_mode, monthly_spend_cap_usd.")
    change: dict[str, Any] = {}
    if "plan" in body:
        change["plan"] = plan_name(body["plan"]) if isinstance(body["plan"], str) else None
        if change["plan"] is None:
            raise Invalid(f"'plan' must match {PLAN_NAME.pattern}.", param="plan")
    if "billing_mode" in body:
        mode = body["billing_mode"]
        change["billing_mode"] = None if mode is None else _mode(mode)
    if "monthly_spend_cap_usd" in body:
        cap = body["monthly_spend_cap_usd"]
        change["monthly_spend_cap_usd"] = (
            None if cap is None else usd(cap, field="monthly_spend_cap_usd")
        )
    return change


# -- operations ----------------------------------------------------------------------------


async def list_plans(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [as_dict(r) for r in await conn.fetch(f"SELECT {_PLAN} FROM plans ORDER BY name")]


async def get_plan(conn: asyncpg.Connection, name: str) -> dict[str, Any]:
    """The plan ``name``; NotFound also for what cannot be a plan's name."""
    valid = isinstance(name, str) and PLAN_NAME.fullmatch(name)
    row = await conn.fetchrow(f"SELECT {_PLAN} FROM plans WHERE name = $1", name) if valid else None
    if row is None:
        raise NotFound("plan", name)
    return as_dict(row)


async def set_plan(
    conn: asyncpg.Connection, *, actor: str, name: str, spec: PlanSpec
) -> dict[str, Any]:
    """Create or replace a plan; its tenants' quota follows at billing's next sweep."""
    name = plan_name(name)
    before = await conn.fetchrow(f"SELECT {_PLAN} FROM plans WHERE name = $1 FOR UPDATE", name)
    after = as_dict(
        await conn.fetchrow(
            f"""
            INSERT INTO plans (name, description, billing_mode, monthly_allowance_tokens,
                               monthly_allowance_usd)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (name) DO UPDATE SET
                description = EXCLUDED.description, billing_mode = EXCLUDED.billing_mode,
                monthly_allowance_tokens = EXCLUDED.monthly_allowance_tokens,
                monthly_allowance_usd = EXCLUDED.monthly_allowance_usd, updated_at = now()
            RETURNING {_PLAN}
            """,
            name,
            spec.description,
            spec.billing_mode,
            spec.monthly_allowance_tokens,
            spec.monthly_allowance_usd,
        )
    )
    await audit.record(
        conn,
        actor=actor,
        action="plan.create" if before is None else "plan.update",
        entity="plan",
        entity_id=name,
        before=None if before is None else as_dict(before),
        after=after,
    )
    return after


async def billing_of(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any]:
    tenant = await get(conn, "tenant", tenant_id)  # NotFound for anything but a tenant id
    return as_dict(
        await conn.fetchrow(f"SELECT {_BILLING} FROM tenants WHERE id = $1", tenant["id"])
    )


async def set_billing(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, change: dict[str, Any]
) -> dict[str, Any]:
    """Change a tenant's plan, billing mode or spend cap; its quota is recomputed at once."""
    before = await billing_of(conn, tenant_id)
    if "plan" in change:
        await get_plan(conn, change["plan"])
    columns = sorted(change)
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    await conn.execute(
        f"UPDATE tenants SET {assignments}, updated_at = now() WHERE id = $1",
        before["id"],
        *(change[c] for c in columns),
    )
    await quota_store.recompute(conn, before["id"], now=await conn.fetchval("SELECT now()"))
    after = await billing_of(conn, before["id"])
    await audit.record(
        conn,
        actor=actor,
        action="tenant.billing",
        entity="tenant",
        entity_id=before["id"],
        before=before,
        after=after,
    )
    await announce(conn, "tenant", before["id"])  # ext_authz caches the plan with the keys
    return after
