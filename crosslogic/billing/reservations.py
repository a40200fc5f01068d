"""Reserved capacity, pure: what a reservation is, and how much of an hour's usage it covers.

A reservation gives one tenant ``tokens_per_minute`` tokens of one model (in one region, or
in any) in every minute of ``[starts_at, ends_at)``, whole UTC hours, for a fixed fee.

Coverage rule: in each minute (UTC, by the request's ``started_at``), the tenant's tokens in
the reservation's scope up to ``tokens_per_minute`` are covered; the rest is overage, billed
at the metered price. When a minute goes over, the covered tokens are taken from its prompt
and completion tokens in proportion (the prompt share rounded half-even to a whole token,
completion takes the rest), and the covered cost is the minute's metered cost in the same
proportion, rounded half-even to 10 places like a usage row's cost. So covered + overage is
exactly the metered usage, in tokens and in cost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from crosslogic.accounts.requests import json_object
from crosslogic.errors import Invalid
from crosslogic.times import parse_time

_PLACES = Decimal("1e-10")
_FEE = re.compile(r"^\d{1,12}(\.\d{1,2})?$")  # numeric(14, 2): whole cents
MAX_TOKENS_PER_MINUTE = 10**12
FIELDS = {"model", "region", "tokens_per_minute", "starts_at", "ends_at", "fee_usd", "note"}


@dataclass(frozen=True)
class ReservationSpec:
    model: str
    region: str | None
    tokens_per_minute: int
    starts_at: datetime
    ends_at: datetime
    fee_usd: Decimal
    note: str = ""


def _whole_hour(value: Any, *, param: str) -> datetime:
    moment = parse_time(value, param=param)  # UTC
    if moment.minute or moment.second or moment.microsecond:
        raise Invalid(
            f"'{param}' must be a whole UTC hour, like 2026-12-01T00:00:00Z.", param=param
        )
    return moment


def fee(value: Any) -> Decimal:
    """A fee in USD, whole cents (Stripe is sent it as is), zero allowed."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _FEE.fullmatch(value):
        raise Invalid(
            "'fee_usd' must be an amount in USD in whole cents, as a decimal string like "
            '"1500.00" or an integer.',
            param="fee_usd",
        )
    return Decimal(value)


def reservation_spec(body: Any, *, now: datetime) -> ReservationSpec:
    """A reservation to create: every field but ``region`` (null/absent: any region) and
    ``note`` is required; the period is whole UTC hours and must not be over already."""
    body = json_object(body, FIELDS)
    for name in ("model", "tokens_per_minute", "starts_at", "ends_at", "fee_usd"):
        if name not in body:
            raise Invalid(f"'{name}' is required.", param=name)
    model = body["model"]
    # NUL: PostgreSQL text cannot hold it
    if not isinstance(model, str) or not 1 <= len(model) <= 200 or "\x00" in model:
        raise Invalid("'model' must be a model's name.", param="model")
    region = body.get("region")
    if region is not None and (not isinstance(region, str) or not region or "\x00" in region):
        raise Invalid("'region' must be a region's code, or null for any region.", param="region")
    tpm = body["tokens_per_minute"]
    if isinstance(tpm, bool) or not isinstance(tpm, int) or not 0 < tpm <= MAX_TOKENS_PER_MINUTE:
        raise Invalid(
            f"'tokens_per_minute' must be an integer from 1 to {MAX_TOKENS_PER_MINUTE}.",
            param="tokens_per_minute",
        )
    starts_at = _whole_hour(body["starts_at"], param="starts_at")
    ends_at = _whole_hour(body["ends_at"], param="ends_at")
    if ends_at <= starts_at:
        raise Invalid("'ends_at' must be after 'starts_at'.", param="ends_at")
    if ends_at <= now:
        raise Invalid(
            "'ends_at' is in the past: a reservation cannot be sold afterwards.", param="ends_at"
        )
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 500:
        raise Invalid("'note' must be a string of at most 500 characters.", param="note")
    if "\x00" in note:
        raise Invalid("'note' must not contain a NUL character.", param="note")
    return ReservationSpec(model, region, tpm, starts_at, ends_at, fee(body["fee_usd"]), note)


@dataclass(frozen=True)
class MinuteUsage:
    """The tenant's usage in a reservation's scope in one minute."""

    prompt_tokens: int
    completion_tokens: int
    cost: Decimal

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Coverage:
    """One reserved hour: the usage in scope and the part of it covered by the fee."""

    used_prompt_tokens: int = 0
    used_completion_tokens: int = 0
    used_cost: Decimal = Decimal(0)
    covered_prompt_tokens: int = 0
    covered_completion_tokens: int = 0
    covered_cost: Decimal = Decimal(0)
    minutes_over: int = 0

    def __add__(self, other: Coverage) -> Coverage:
        return Coverage(
            self.used_prompt_tokens + other.used_prompt_tokens,
            self.used_completion_tokens + other.used_completion_tokens,
            self.used_cost + other.used_cost,
            self.covered_prompt_tokens + other.covered_prompt_tokens,
            self.covered_completion_tokens + other.covered_completion_tokens,
            self.covered_cost + other.covered_cost,
            self.minutes_over + other.minutes_over,
        )


def cover_minute(usage: MinuteUsage, tokens_per_minute: int) -> Coverage:
    """What a reservation of ``tokens_per_minute`` covers of one minute's usage."""
    used = Coverage(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cost,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cost,
    )
    total = usage.tokens
    if total <= tokens_per_minute:
        return used
    prompt = int(
        (Decimal(usage.prompt_tokens) * tokens_per_minute / total).quantize(
            Decimal(1), rounding=ROUND_HALF_EVEN
        )
    )
    cost = (usage.cost * tokens_per_minute / total).quantize(_PLACES, rounding=ROUND_HALF_EVEN)
    return Coverage(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cost,
        prompt,
        tokens_per_minute - prompt,
        cost,
        minutes_over=1,
    )


def cover_hour(minutes: Iterable[MinuteUsage], tokens_per_minute: int) -> Coverage:
    """The coverage of an hour, minute by minute."""
    hour = Coverage()
    for minute in minutes:
        hour += cover_minute(minute, tokens_per_minute)
    return hour
