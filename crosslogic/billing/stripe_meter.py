"""Sending one meter event (usage) or invoice item (a reservation's fee) to Stripe with the
official ``stripe`` library: the only place that knows its types and errors.

The library itself retries connection errors, 409 and 5xx answers a few times, with the
same Idempotency-Key, before it gives up; what is left is an :class:`Answer` that says
whether the event is in Stripe and, if not, whether Stripe as a whole is unreachable (stop
sending for now) or only this event was refused.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import stripe

DEFAULT_API_BASE = stripe.DEFAULT_API_BASE


@dataclass(frozen=True)
class MeterEvent:
    event_name: str
    identifier: str  # also the request's Idempotency-Key
    timestamp: datetime
    payload: dict[str, str]


@dataclass(frozen=True)
class InvoiceItem:
    """A one-off line on the customer's next invoice (USD)."""

    identifier: str  # the request's Idempotency-Key
    customer: str
    amount_cents: int
    description: str
    period_start: datetime
    period_end: datetime
    metadata: dict[str, str]


@dataclass(frozen=True)
class Answer:
    """Stripe's answer to one attempt. ``unreachable``: no answer, or a 5xx / 429 after
    the library's own retries (worth stopping the run); otherwise the event was refused."""

    sent: bool
    http_status: int | None = None
    response: dict[str, Any] | None = None
    error: str | None = None
    unreachable: bool = False


class MeterEvents(Protocol):
    """Where meter events and invoice items go (Stripe, or a test's fake)."""

    async def send(self, event: MeterEvent) -> Answer: ...

    async def send_invoice_item(self, item: InvoiceItem) -> Answer: ...

    async def close(self) -> None: ...


class StripeMeterEvents:
    """Meter events through ``StripeClient.v1.billing.meter_events`` over aiohttp."""

    def __init__(
        self,
        secret_key: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        max_network_retries: int = 2,
        timeout: float = 30.0,
    ) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        base = api_base.rstrip("/")
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": base, "meter_events": base},
            http_client=stripe.AIOHTTPClient(session=self._session),
            max_network_retries=max_network_retries,
        )

    async def send(self, event: MeterEvent) -> Answer:
        return await _answer(
            self._client.v1.billing.meter_events.create_async(
                {
                    "event_name": event.event_name,
                    "identifier": event.identifier,
                    "timestamp": int(event.timestamp.timestamp()),
                    "payload": event.payload,
                },
                {"idempotency_key": event.identifier},
            )
        )

    async def send_invoice_item(self, item: InvoiceItem) -> Answer:
        return await _answer(
            self._client.v1.invoice_items.create_async(
                {
                    "customer": item.customer,
                    "amount": item.amount_cents,
                    "currency": "usd",
                    "description": item.description,
                    "period": {
                        "start": int(item.period_start.timestamp()),
                        "end": int(item.period_end.timestamp()),
                    },
                    "metadata": item.metadata,
                },
                {"idempotency_key": item.identifier},
            )
        )

    async def close(self) -> None:
        await self._session.close()


async def _answer(call: Awaitable[stripe.StripeObject]) -> Answer:
    """Stripe's answer to one request: what it created, or why it refused."""
    try:
        created = await call
    except stripe.StripeError as exc:
        return _refusal(exc)
    return Answer(sent=True, http_status=200, response=created.to_dict())


def _refusal(exc: stripe.StripeError) -> Answer:
    status = exc.http_status
    body = exc.json_body if isinstance(exc.json_body, dict) else None
    unreachable = (
        isinstance(exc, stripe.APIConnectionError)
        or status is None
        or status >= 500
        or status == 429
    )
    error = f"{type(exc).__name__}: {exc.user_message or exc}"
    return Answer(
        sent=False,
        http_status=status,
        response=json.loads(json.dumps(body, default=str)) if body else None,
        error=error[:1000],
        unreachable=unreachable,
    )
