"""Quota, pure: a tenant's credits, monthly allowance and spend cap -> refused or not.

Rules (months are UTC calendar months):

- A plan's monthly allowance (tokens or USD) makes the first part of each month's usage
  free. The *chargeable* cost of a month is what lies beyond it: for a USD allowance
  ``max(0, cost - allowance)``; for a token allowance the cost of the tokens beyond it, pro
  rata (``cost * (tokens - allowance) / tokens``).
- A prepaid tenant's balance is the sum of its unexpired credit grants minus the chargeable
  cost of its usage since the oldest of them was granted. It is refused when its balance is
  used up (<= 0) and this month's allowance is too (or it has none).
- A postpaid tenant is never refused for its balance; with a monthly spend cap it is refused
  once this month's chargeable cost reaches the cap.
- Usage covered by reserved capacity is not chargeable (its fee paid for it) and a
  reservation's fee is not part of a spend cap: the cap bounds metered spend.

Amounts are Decimal, never floats; a pro-rata share is rounded half-even to 10 places, like a
usage row's cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from crosslogic.contracts.quota import ALLOWANCE_USED as ALLOWANCE_USED
from crosslogic.contracts.quota import CREDITS_EXHAUSTED as CREDITS_EXHAUSTED
from crosslogic.contracts.quota import MESSAGES as MESSAGES
from crosslogic.contracts.quota import SPEND_CAP_REACHED as SPEND_CAP_REACHED

PREPAID = "prepaid"
POSTPAID = "postpaid"
MODES = (PREPAID, POSTPAID)
_PLACES = Decimal("1e-10")
ZERO = Decimal(0)


@dataclass(frozen=True)
class Allowance:
    """A plan's monthly free usage: tokens or USD (never both; neither is no allowance)."""

    tokens: int | None = None
    usd: Decimal | None = None


NO_ALLOWANCE = Allowance()


@dataclass(frozen=True)
class Usage:
    tokens: int = 0
    cost: Decimal = ZERO

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.tokens - other.tokens, self.cost - other.cost)


@dataclass(frozen=True)
class MonthUsage:
    """One month's usage, and the part of it before the balance's start (``since``)."""

    month: datetime  # the month's first instant, UTC
    total: Usage
    before_since: Usage = Usage()


@dataclass(frozen=True)
class Grant:
    amount: Decimal
    granted_at: datetime
    expires_at: datetime | None = None

    def live(self, now: datetime) -> bool:
        return self.granted_at <= now and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class Account:
    """What quota needs to know about one tenant."""

    mode: str
    allowance: Allowance
    grants: tuple[Grant, ...]
    months: tuple[MonthUsage, ...]  # from the month of ``since(grants)`` to now's
    spend_cap: Decimal | None = None


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def effective_mode(*, tenant_mode: str | None, plan_mode: str | None, stripe_customer: bool) -> str:
    """The tenant's own mode; else postpaid with a Stripe customer; else its plan's (postpaid
    for a plan that does not exist)."""
    if tenant_mode is not None:
        return tenant_mode
    if stripe_customer:
        return POSTPAID
    return plan_mode or POSTPAID


def since(grants: Iterable[Grant], *, now: datetime) -> datetime | None:
    """Where the balance starts: the oldest unexpired grant (None without one)."""
    live = [g.granted_at for g in grants if g.live(now)]
    return min(live) if live else None


def chargeable(usage: Usage, allowance: Allowance) -> Decimal:
    """The cost of ``usage`` (one month's) beyond the allowance."""
    if allowance.usd is not None:
        return max(ZERO, usage.cost - allowance.usd)
    if allowance.tokens is not None:
        if usage.tokens <= allowance.tokens:
            return ZERO
        share = usage.cost * (usage.tokens - allowance.tokens) / usage.tokens
        return share.quantize(_PLACES, rounding=ROUND_HALF_EVEN)
    return usage.cost


def allowance_left(usage: Usage, allowance: Allowance) -> bool:
    """Whether this month's usage is still within a (non-empty) allowance."""
    if allowance.usd is not None:
        return usage.cost < allowance.usd
    if allowance.tokens is not None:
        return usage.tokens < allowance.tokens
    return False


def balance(account: Account, *, now: datetime) -> Decimal:
    """Unexpired grants minus the chargeable usage since the oldest of them."""
    credit = sum((g.amount for g in account.grants if g.live(now)), ZERO)
    start = since(account.grants, now=now)
    if start is None:
        return credit
    charged = ZERO
    for month in account.months:
        if month.month < month_start(start):
            continue
        # the part of the month before ``since`` used its share of the allowance first
        charged += chargeable(month.total, account.allowance) - chargeable(
            month.before_since, account.allowance
        )
    return credit - charged


def this_month(months: Sequence[MonthUsage], *, now: datetime) -> Usage:
    current = month_start(now)
    for month in months:
        if month.month == current:
            return month.total
    return Usage()


def exhaustion(account: Account, *, now: datetime) -> str | None:
    """Why the tenant's new requests are refused now, or None if they are not."""
    month = this_month(account.months, now=now)
    if account.mode == POSTPAID:
        cap = account.spend_cap
        if cap is not None and chargeable(month, account.allowance) >= cap:
            return SPEND_CAP_REACHED
        return None
    if allowance_left(month, account.allowance):
        return None
    if balance(account, now=now) > ZERO:
        return None
    has_allowance = account.allowance != NO_ALLOWANCE
    credited = any(g.live(now) for g in account.grants)
    return ALLOWANCE_USED if has_allowance and not credited else CREDITS_EXHAUSTED
