"""What the Stripe export sends, decided without I/O.

Usage goes to Stripe as billing meter events, one per (tenant, hour, model, meter) and
sequence number: the first export of an hour sends its total as sequence 0; an hour that
grew afterwards (late records, re-aggregation) sends only the difference, as the next
sequence number. Everything planned counts as exported, sent or still to be retried, so a
re-run plans nothing new. An event's identifier is derived from those five values alone:
sent again (a retry, a crash between Stripe's answer and our commit, a second export
process), it is the same event to Stripe, which keeps one.

Reserved capacity: the tokens a reservation covered are not metered (the totals come from
``metered_hourly``, the aggregates less that coverage), and its fee goes to Stripe once,
when its period starts, as an invoice item of its own (identifier ``cl_res_<id>_fee``): so
the fee and the overage are separate lines of the tenant's invoice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

METERS = ("prompt_tokens", "completion_tokens")
FEE = "reservation_fee"  # billing_events.meter of a reservation's fee
# Stripe refuses meter events older than 35 days; a day's margin for clock skew and retries
LOOKBACK = timedelta(days=34)
_SHORT = {"prompt_tokens": "p", "completion_tokens": "c"}


@dataclass(frozen=True)
class MeterNames:
    """The Stripe meters' event names, per meter (settings STRIPE_METER_*)."""

    prompt_tokens: str = "crosslogic_prompt_tokens"
    completion_tokens: str = "crosslogic_completion_tokens"

    def of(self, meter: str) -> str:
        return str(getattr(self, meter))


@dataclass(frozen=True)
class HourTotal:
    """One tenant's usage of one model in one hour, summed over environments and regions,
    beside what was already planned for export (sent or not) per meter."""

    tenant_id: str
    stripe_customer_id: str
    hour: datetime
    model_id: int
    model: str
    tokens: dict[str, int]  # meter -> usage_hourly's total
    exported: dict[str, int]  # meter -> sum of the events planned so far
    next_sequence: dict[str, int]  # meter -> 1 + the highest sequence planned (0: none)


@dataclass(frozen=True)
class PlannedEvent:
    """A meter event to record (pending) and send."""

    tenant_id: str
    stripe_customer_id: str
    hour: datetime
    model_id: int
    model: str
    meter: str
    sequence: int
    quantity: int
    event_name: str
    identifier: str
    amount_usd: Decimal | None = None  # a fee's amount (meter events carry tokens only)
    reservation_id: int | None = None


@dataclass(frozen=True)
class ReservationFee:
    """A started reservation of a tenant with a Stripe customer, whose fee is not planned."""

    reservation_id: int
    tenant_id: str
    stripe_customer_id: str
    model_id: int
    model: str
    starts_at: datetime
    fee_usd: Decimal


@dataclass(frozen=True)
class Overbilled:
    """An hour whose total fell below what was exported: meter events cannot be negative,
    so this is left to an operator (Stripe's meter event adjustments) and reported."""

    tenant_id: str
    hour: datetime
    model_id: int
    meter: str
    exported: int
    total: int


def identifier(*, tenant_id: str, hour: datetime, model_id: int, meter: str, sequence: int) -> str:
    """The event's Stripe identifier and Idempotency-Key (at most 100 characters)."""
    return f"cl_{tenant_id}_{int(hour.timestamp())}_{model_id}_{_SHORT[meter]}{sequence}"


def plan(
    totals: Iterable[HourTotal], names: MeterNames
) -> tuple[list[PlannedEvent], list[Overbilled]]:
    """The events that bring every meter's export up to its total, and the hours where
    the export is already above it."""
    events: list[PlannedEvent] = []
    over: list[Overbilled] = []
    for total in totals:
        for meter in METERS:
            tokens = total.tokens.get(meter, 0)
            exported = total.exported.get(meter, 0)
            if tokens < exported:
                over.append(
                    Overbilled(total.tenant_id, total.hour, total.model_id, meter, exported, tokens)
                )
            if tokens <= exported:
                continue
            sequence = total.next_sequence.get(meter, 0)
            events.append(
                PlannedEvent(
                    tenant_id=total.tenant_id,
                    stripe_customer_id=total.stripe_customer_id,
                    hour=total.hour,
                    model_id=total.model_id,
                    model=total.model,
                    meter=meter,
                    sequence=sequence,
                    quantity=tokens - exported,
                    event_name=names.of(meter),
                    identifier=identifier(
                        tenant_id=total.tenant_id,
                        hour=total.hour,
                        model_id=total.model_id,
                        meter=meter,
                        sequence=sequence,
                    ),
                )
            )
    return events, over


def plan_fees(fees: Iterable[ReservationFee]) -> list[PlannedEvent]:
    """One invoice item per reservation fee (a free reservation sends nothing)."""
    return [
        PlannedEvent(
            tenant_id=f.tenant_id,
            stripe_customer_id=f.stripe_customer_id,
            hour=f.starts_at,
            model_id=f.model_id,
            model=f.model,
            meter=FEE,
            sequence=0,
            quantity=1,
            event_name="",
            identifier=f"cl_res_{f.reservation_id}_fee",
            amount_usd=f.fee_usd,
            reservation_id=f.reservation_id,
        )
        for f in fees
        if f.fee_usd > 0
    ]


def cents(amount: Decimal) -> int:
    """A fee (whole cents by its column's type) in Stripe's integer cents."""
    value = amount * 100
    if value != value.to_integral_value():
        raise ValueError(f"{amount} is not whole cents")
    return int(value)


def fee_description(
    *,
    model: str,
    region: str | None,
    tokens_per_minute: int,
    starts_at: datetime,
    ends_at: datetime,
) -> str:
    where = f"in {region}" if region else "in any region"
    return (
        f"Reserved capacity: {tokens_per_minute:,} tokens/min of {model} {where}, "
        f"{starts_at.isoformat()} to {ends_at.isoformat()}"
    )


def retry_delay(attempts: int, *, base: float = 30.0, cap: float = 3600.0) -> timedelta:
    """How long a failed event waits before its next attempt: doubling from ``base`` per
    attempt made, at most ``cap``."""
    exponent = min(max(attempts - 1, 0), 30)
    return timedelta(seconds=min(base * 2**exponent, cap))


def payload(*, stripe_customer_id: str, quantity: int, model: str) -> dict[str, str]:
    """The meter event's payload: Stripe's default customer and value keys, and the model
    (a dimension a meter may group by)."""
    return {"stripe_customer_id": stripe_customer_id, "value": str(quantity), "model": model}
