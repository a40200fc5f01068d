"""Validation of catalog input, pure: JSON bodies -> typed requests, or Invalid naming the
field. The admin API answers it as a 400, the command line as ``error: ...``.

Money arrives as a JSON number or a decimal string and becomes a Decimal without rounding:
more decimal places than the column keeps is refused, never silently rounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from crosslogic.accounts.requests import json_object
from crosslogic.catalog.money import as_decimal
from crosslogic.contracts.routing import LEAST_LOADED, STRATEGIES
from crosslogic.errors import Invalid
from crosslogic.times import parse_time

REGION_CODE = re.compile(r"^[a-z0-9-]{1,64}$")
MODEL_STATUSES = ("active", "deprecated")
MAX_CONTEXT = 10_000_000
# numeric(12, 6): per-million prices; numeric(8, 4): multipliers; numeric(5, 2): percent
PRICE = (6, Decimal("999999.999999"))
MULTIPLIER = (4, Decimal("9999.9999"))
PERCENT = (2, Decimal(100))


@dataclass(frozen=True)
class RatesIn:
    prompt: Decimal
    completion: Decimal
    embedding: Decimal


@dataclass(frozen=True)
class ModelCreate:
    name: str
    family: str = ""
    context_length: int = 8192
    rates: RatesIn | None = None
    lb_strategy: str = LEAST_LOADED


@dataclass(frozen=True)
class ModelUpdate:
    status: str | None = None
    context_length: int | None = None
    lb_strategy: str | None = None


@dataclass(frozen=True)
class RegionCreate:
    code: str
    name: str
    provider: str = ""
    price_multiplier: Decimal = Decimal(1)


@dataclass(frozen=True)
class RegionUpdate:
    name: str | None = None
    price_multiplier: Decimal | None = None


@dataclass(frozen=True)
class PriceVersionIn:
    rates: RatesIn
    effective_at: datetime


@dataclass(frozen=True)
class TenantPriceIn:
    """A contract price (``rates``) or a discount (``discount_percent``) on ``model``."""

    model: str
    effective_at: datetime
    rates: RatesIn | None = None
    discount_percent: Decimal | None = None


def _text(fields: dict[str, Any], name: str, *, required: bool, default: str = "") -> str:
    value = fields.get(name, None if required else default)
    if not isinstance(value, str) or (required and not value) or len(value) > 200:
        raise Invalid(f"'{name}' must be a non-empty string of at most 200 characters.", param=name)
    return value


def _money(fields: dict[str, Any], name: str, limits: tuple[int, Decimal]) -> Decimal:
    places, maximum = limits
    value = as_decimal(fields.get(name))
    positive = name in ("price_multiplier", "discount_percent")
    if (
        value is None
        or value < 0
        or (positive and value == 0)
        or value > maximum
        or -value.as_tuple().exponent > places  # type: ignore[operator]
    ):
        low = "> 0" if positive else ">= 0"
        raise Invalid(
            f"'{name}' must be a decimal number {low} and <= {maximum}, with at most "
            f"{places} decimal places (a JSON number or a string).",
            param=name,
        )
    return value


def _rates(fields: dict[str, Any]) -> RatesIn:
    prompt = _money(fields, "prompt_per_mtok", PRICE)
    completion = _money(fields, "completion_per_mtok", PRICE)
    embedding = (
        _money(fields, "embedding_per_mtok", PRICE) if "embedding_per_mtok" in fields else prompt
    )
    return RatesIn(prompt, completion, embedding)


def _context_length(fields: dict[str, Any]) -> int:
    value = fields.get("context_length")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_CONTEXT:
        raise Invalid(
            f"'context_length' must be an integer in [1, {MAX_CONTEXT}].", param="context_length"
        )
    return value


def effective_at(raw: Any, *, now: datetime) -> datetime:
    """When a new version applies: ``now`` if absent; never in the past (a price never
    applies retroactively)."""
    if raw is None:
        return now
    when = parse_time(raw, param="effective_at")
    if when < now:
        raise Invalid(
            "'effective_at' must not be in the past: a price never applies retroactively.",
            param="effective_at",
        )
    return when


_RATE_FIELDS = {"prompt_per_mtok", "completion_per_mtok", "embedding_per_mtok"}


def _strategy(fields: dict[str, Any]) -> str:
    value = fields.get("lb_strategy")
    if value not in STRATEGIES:
        raise Invalid(f"'lb_strategy' must be one of {', '.join(STRATEGIES)}.", param="lb_strategy")
    return str(value)


def model_create(body: Any) -> ModelCreate:
    fields = json_object(body, {"name", "family", "context_length", "lb_strategy"} | _RATE_FIELDS)
    rates = None
    if _RATE_FIELDS & set(fields):
        rates = _rates(fields)
    return ModelCreate(
        name=_text(fields, "name", required=True),
        family=_text(fields, "family", required=False),
        context_length=_context_length(fields) if "context_length" in fields else 8192,
        rates=rates,
        lb_strategy=_strategy(fields) if "lb_strategy" in fields else LEAST_LOADED,
    )


def model_update(body: Any) -> ModelUpdate:
    fields = json_object(body, {"status", "context_length", "lb_strategy"})
    if not fields:
        raise Invalid("Give 'status', 'context_length' or 'lb_strategy'.", param="status")
    status = fields.get("status")
    if "status" in fields and status not in MODEL_STATUSES:
        raise Invalid(f"'status' must be one of {', '.join(MODEL_STATUSES)}.", param="status")
    length = _context_length(fields) if "context_length" in fields else None
    strategy = _strategy(fields) if "lb_strategy" in fields else None
    return ModelUpdate(status=status, context_length=length, lb_strategy=strategy)


def region_create(body: Any) -> RegionCreate:
    fields = json_object(body, {"code", "name", "provider", "price_multiplier"})
    code = fields.get("code")
    if not isinstance(code, str) or not REGION_CODE.fullmatch(code):
        raise Invalid(f"'code' must match {REGION_CODE.pattern}.", param="code")
    multiplier = (
        _money(fields, "price_multiplier", MULTIPLIER)
        if "price_multiplier" in fields
        else Decimal(1)
    )
    return RegionCreate(
        code=code,
        name=_text(fields, "name", required=True),
        provider=_text(fields, "provider", required=False),
        price_multiplier=multiplier,
    )


def region_update(body: Any) -> RegionUpdate:
    fields = json_object(body, {"name", "price_multiplier"})
    if not fields:
        raise Invalid("Give 'price_multiplier' or 'name'.", param="price_multiplier")
    return RegionUpdate(
        name=_text(fields, "name", required=True) if "name" in fields else None,
        price_multiplier=(
            _money(fields, "price_multiplier", MULTIPLIER) if "price_multiplier" in fields else None
        ),
    )


def price_version(body: Any, *, now: datetime) -> PriceVersionIn:
    fields = json_object(body, _RATE_FIELDS | {"effective_at"})
    return PriceVersionIn(_rates(fields), effective_at(fields.get("effective_at"), now=now))


def tenant_price(body: Any, *, now: datetime) -> TenantPriceIn:
    fields = json_object(body, _RATE_FIELDS | {"model", "discount_percent", "effective_at"})
    model = _text(fields, "model", required=True)
    when = effective_at(fields.get("effective_at"), now=now)
    if "discount_percent" in fields:
        extra = sorted(_RATE_FIELDS & set(fields))
        if extra:
            raise Invalid("Give a contract price or 'discount_percent', not both.", param=extra[0])
        percent = _money(fields, "discount_percent", PERCENT)
        return TenantPriceIn(model, when, discount_percent=percent)
    return TenantPriceIn(model, when, rates=_rates(fields))


def removal_time(raw: str | None, *, now: datetime) -> datetime:
    """When removing an override takes effect (``?effective_at=``; default now)."""
    return effective_at(raw or None, now=now)
