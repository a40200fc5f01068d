"""Pricing rules, pure: which price is in force, and what a request costs.

USD per million tokens, exact decimal arithmetic (never floats). For a request of a tenant on
a model, started at ``t`` and served in a region:

- the list price is the model's version with the latest ``effective_at <= t`` (a version
  never applies before its time, so a new one never reprices the past);
- the tenant's override in force at ``t`` (same rule), if any: a *contract* price replaces
  the list price and ignores the region multiplier; a *discount* takes its percentage off
  the list price after the multiplier; *none* ends an earlier override;
- the region multiplier (``regions.price_multiplier``, 1 when the region is unknown);
- embeddings (``/v1/embeddings``) pay the embedding price on their prompt tokens;
- THE rounding rule: the exact cost is rounded half-even to 10 decimal places (the
  ``usage_records.cost_usd`` scale), here and only here. Sums of rows are exact.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import NamedTuple, TypeVar

MILLION = Decimal(1_000_000)
HUNDRED = Decimal(100)
ONE = Decimal(1)
ZERO = Decimal(0)
COST_QUANTUM = Decimal("1e-10")  # usage_records.cost_usd is numeric(20, 10)
EMBEDDINGS = "/v1/embeddings"
# Products of token counts, prices, a multiplier and a discount need more than the default 28
# significant digits to stay exact until the one rounding; 60 holds any value the columns allow.
EXACT = Context(prec=60)


def round_cost(exact: Decimal) -> Decimal:
    """A usage row's stored cost: ``exact`` rounded half-even to 10 decimal places."""
    return exact.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN, context=EXACT)


@dataclass(frozen=True)
class Rates:
    """USD per million prompt, completion and embedding tokens."""

    prompt: Decimal
    completion: Decimal
    embedding: Decimal


@dataclass(frozen=True)
class PriceVersion:
    """A model's list price from ``effective_at`` on (``id``: model_prices.id)."""

    id: int
    model_id: int
    effective_at: datetime
    rates: Rates


@dataclass(frozen=True)
class TenantPrice:
    """A tenant's override on a model from ``effective_at`` on: ``kind`` is contract (with
    ``rates``), discount (with ``discount_percent``) or none."""

    id: int
    tenant_id: str
    model_id: int
    effective_at: datetime
    kind: str
    rates: Rates | None = None
    discount_percent: Decimal | None = None


class Priced(NamedTuple):
    """A request's stored cost and what it was computed with (for reproducing it). A tuple:
    one is made per usage row."""

    cost: Decimal
    price_id: int | None
    tenant_price_id: int | None
    multiplier: Decimal
    region_code: str | None


V = TypeVar("V", PriceVersion, TenantPrice)


def in_force(versions: list[V], at: datetime) -> V | None:
    """The version of ``versions`` (sorted by effective_at) in force at ``at``."""
    index = bisect.bisect_right(versions, at, key=lambda v: v.effective_at)
    return versions[index - 1] if index else None


@dataclass(frozen=True)
class Terms:
    """What every request of one tenant, model, endpoint kind and region costs per token in
    one price period: its rates times ``factor`` (the multiplier, the discount and the
    per-million division in one exact number), and what the row records."""

    prompt: Decimal  # per token of the endpoint's kind (embeddings: the embedding rate)
    completion: Decimal  # 0 for embeddings
    factor: Decimal
    price_id: int | None
    tenant_price_id: int | None
    multiplier: Decimal
    region_code: str | None

    def priced(self, prompt_tokens: int, completion_tokens: int) -> Priced:
        """The request's cost, exact until the one rounding. Every operand has at most a
        few dozen digits (the columns' scales), so the 60-digit products and sums are exact
        and grouping the factor first changes nothing."""
        exact = EXACT.multiply(
            EXACT.add(
                EXACT.multiply(prompt_tokens, self.prompt),
                EXACT.multiply(completion_tokens, self.completion),
            ),
            self.factor,
        )
        return Priced(
            round_cost(exact),
            self.price_id,
            self.tenant_price_id,
            self.multiplier,
            self.region_code,
        )


@dataclass(frozen=True)
class PriceBook:
    """Every price version, override, region multiplier and node region, as loaded at one
    moment; immutable, so a batch is priced against one consistent book. The terms it works
    out are kept (``_terms``), so a batch's rows cost a lookup and a few multiplications."""

    models: dict[int, list[PriceVersion]] = field(default_factory=dict)
    tenants: dict[tuple[str, int], list[TenantPrice]] = field(default_factory=dict)
    multipliers: dict[str, Decimal] = field(default_factory=dict)
    node_regions: dict[str, str] = field(default_factory=dict)
    # (tenant, model) -> the moments its list price or override changes; (tenant, model,
    # embeddings, region, period) -> its terms: derived from the fields above, never changed
    _periods: dict[tuple[str, int], list[datetime]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _terms: dict[tuple[str, int, bool, str | None, int], Terms] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(
        cls,
        *,
        versions: Iterable[PriceVersion] = (),
        overrides: Iterable[TenantPrice] = (),
        multipliers: dict[str, Decimal] | None = None,
        node_regions: dict[str, str] | None = None,
    ) -> PriceBook:
        models: dict[int, list[PriceVersion]] = {}
        for version in versions:
            models.setdefault(version.model_id, []).append(version)
        tenants: dict[tuple[str, int], list[TenantPrice]] = {}
        for override in overrides:
            tenants.setdefault((override.tenant_id, override.model_id), []).append(override)
        for chain in models.values():
            chain.sort(key=lambda v: v.effective_at)
        for overrides_of in tenants.values():
            overrides_of.sort(key=lambda v: v.effective_at)
        return cls(models, tenants, dict(multipliers or {}), dict(node_regions or {}))

    def region_of(self, node_id: str | None) -> str | None:
        return None if node_id is None else self.node_regions.get(node_id)

    def price(
        self,
        *,
        tenant_id: str,
        model_id: int,
        endpoint: str,
        started_at: datetime,
        prompt_tokens: int,
        completion_tokens: int,
        region_code: str | None,
    ) -> Priced:
        """The cost of one request (see the module's rules), computed exactly, rounded once."""
        terms = self.terms(
            tenant_id=tenant_id,
            model_id=model_id,
            endpoint=endpoint,
            started_at=started_at,
            region_code=region_code,
        )
        return terms.priced(prompt_tokens, completion_tokens)

    def terms(
        self,
        *,
        tenant_id: str,
        model_id: int,
        endpoint: str,
        started_at: datetime,
        region_code: str | None,
    ) -> Terms:
        """The terms of a request started at ``started_at`` (worked out once per period)."""
        pair = (tenant_id, model_id)
        periods = self._periods.get(pair)
        if periods is None:
            moments = {v.effective_at for v in self.models.get(model_id, [])}
            moments.update(v.effective_at for v in self.tenants.get(pair, []))
            periods = self._periods[pair] = sorted(moments)
        embeddings = endpoint == EMBEDDINGS
        key = (
            tenant_id,
            model_id,
            embeddings,
            region_code,
            bisect.bisect_right(periods, started_at),
        )
        found = self._terms.get(key)
        if found is None:
            found = self._terms[key] = self._work_out(
                tenant_id, model_id, embeddings, started_at, region_code
            )
        return found

    def _work_out(
        self,
        tenant_id: str,
        model_id: int,
        embeddings: bool,
        started_at: datetime,
        region_code: str | None,
    ) -> Terms:
        def per_token(rates: Rates) -> tuple[Decimal, Decimal]:
            return (rates.embedding, ZERO) if embeddings else (rates.prompt, rates.completion)

        with localcontext(EXACT):
            multiplier = self.multipliers.get(region_code, ONE) if region_code else ONE
            override = in_force(self.tenants.get((tenant_id, model_id), []), started_at)
            listed = in_force(self.models.get(model_id, []), started_at)
            listed_id = None if listed is None else listed.id
            if override is not None and override.kind == "contract" and override.rates is not None:
                # the multiplier recorded is the one applied: none
                prompt, completion = per_token(override.rates)
                return Terms(
                    prompt, completion, ONE / MILLION, listed_id, override.id, ONE, region_code
                )
            if listed is None:  # no price in force (yet): free, and the row says so (no price id)
                return Terms(ZERO, ZERO, ZERO, None, None, multiplier, region_code)
            factor = multiplier / MILLION
            applied = None
            if override is not None and override.kind == "discount":
                assert override.discount_percent is not None
                factor = factor * (HUNDRED - override.discount_percent) / HUNDRED
                applied = override.id
            elif override is not None:  # kind none: recorded, so the row says no override applied
                applied = override.id
            prompt, completion = per_token(listed.rates)
            return Terms(prompt, completion, factor, listed.id, applied, multiplier, region_code)
