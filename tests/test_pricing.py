"""The pricing rules, pure: the version in force, overrides, multipliers, rounding,
embeddings; and the price book's reloads (clock injected, a fake source)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crosslogic.billing import price_store
from crosslogic.billing.price_store import PriceCache
from crosslogic.billing.pricing import (
    ONE,
    PriceBook,
    PriceVersion,
    Rates,
    TenantPrice,
    round_cost,
)

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=30)
TENANT = "00000000-0000-0000-0000-000000000001"
D = Decimal


def rates(prompt: str, completion: str, embedding: str = "0.02") -> Rates:
    return Rates(D(prompt), D(completion), D(embedding))


V1 = PriceVersion(1, 7, T0, rates("0.20", "0.60"))
V2 = PriceVersion(2, 7, T1, rates("0.40", "1.20"))
BOOK = PriceBook.of(versions=[V2, V1], multipliers={"eu": D("1.5")}, node_regions={"n1": "eu"})


def cost(book: PriceBook = BOOK, **changes: Any) -> Any:
    request: dict[str, Any] = {
        "tenant_id": TENANT,
        "model_id": 7,
        "endpoint": "/v1/chat/completions",
        "started_at": T0,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "region_code": None,
    }
    return book.price(**{**request, **changes})


def test_the_version_in_force_at_the_start_of_the_request() -> None:
    before = cost(started_at=T0 - timedelta(microseconds=1))
    assert (before.cost, before.price_id) == (D("0E-10"), None)  # no price yet: free, no id
    at_first = cost(started_at=T0)
    assert (at_first.cost, at_first.price_id) == (D("0.0000140000"), 1)
    last_of_first = cost(started_at=T1 - timedelta(microseconds=1))
    assert last_of_first.price_id == 1
    at_second = cost(started_at=T1)  # a version applies from its timestamp on, inclusive
    assert (at_second.cost, at_second.price_id) == (D("0.0000280000"), 2)
    assert cost(started_at=T1 + timedelta(days=400)).price_id == 2


def test_region_multiplier_applies_to_the_list_price() -> None:
    priced = cost(region_code="eu")
    assert priced.cost == D("0.0000210000") and priced.multiplier == D("1.5")
    assert cost(region_code="unknown-region").cost == D("0.0000140000")
    assert BOOK.region_of("n1") == "eu" and BOOK.region_of("n2") is None
    assert BOOK.region_of(None) is None


def test_contract_price_replaces_list_price_and_multiplier() -> None:
    contract = TenantPrice(9, TENANT, 7, T0, "contract", rates=rates("0.10", "0.10"))
    book = PriceBook.of(versions=[V1, V2], overrides=[contract], multipliers={"eu": D(2)})
    priced = cost(book, region_code="eu", started_at=T1)
    assert priced.cost == D("0.0000030000")
    assert (priced.price_id, priced.tenant_price_id, priced.multiplier) == (2, 9, 1)
    other = cost(book, tenant_id="someone-else", started_at=T1)
    assert (other.cost, other.tenant_price_id) == (D("0.0000280000"), None)


def test_discount_after_the_multiplier_and_its_end() -> None:
    discount = TenantPrice(5, TENANT, 7, T0, "discount", discount_percent=D("12.5"))
    ended = TenantPrice(6, TENANT, 7, T1, "none")
    book = PriceBook.of(versions=[V1], overrides=[ended, discount], multipliers={"eu": D(2)})
    priced = cost(book, region_code="eu")
    # (10 * 0.20 + 20 * 0.60) / 1e6 * 2 * 0.875
    assert (priced.cost, priced.tenant_price_id) == (D("0.0000245000"), 5)
    after = cost(book, started_at=T1)
    assert (after.cost, after.tenant_price_id) == (D("0.0000140000"), 6)
    full = TenantPrice(5, TENANT, 7, T0, "discount", discount_percent=D(100))
    assert cost(PriceBook.of(versions=[V1], overrides=[full])).cost == 0


def test_embeddings_pay_the_embedding_price_on_prompt_tokens() -> None:
    priced = cost(endpoint="/v1/embeddings", prompt_tokens=1000, completion_tokens=0)
    assert priced.cost == D("0.0000200000")  # 1000 * 0.02 / 1e6


def test_rounding_is_half_even_to_ten_places() -> None:
    assert round_cost(D("0.00000000005")) == D("0E-10")
    assert round_cost(D("0.00000000015")) == D("0.0000000002")
    assert round_cost(D("0.000000000250001")) == D("0.0000000003")
    # one prompt token at 0.000025/mtok: 2.5e-11, rounded to even (0), exactly, no float
    tiny = PriceBook.of(versions=[PriceVersion(1, 7, T0, rates("0.000025", "0"))])
    assert cost(tiny, prompt_tokens=1, completion_tokens=0).cost == D("0E-10")
    assert cost(tiny, prompt_tokens=3, completion_tokens=0).cost == D("1E-10")  # 7.5e-11


class FakeSource:
    """What load_book reads, as PostgreSQL would answer it; counts the loads."""

    def __init__(self) -> None:
        self.loads = 0
        self.fail = False

    async def fetch(self, query: str) -> list[dict[str, Any]]:
        if "model_prices" in query:
            self.loads += 1
            if self.fail:
                raise OSError("connection refused")
            return [
                {
                    "id": 1,
                    "model_id": 7,
                    "effective_at": T0,
                    "prompt_per_mtok": D("0.2"),
                    "completion_per_mtok": D("0.6"),
                    "embedding_per_mtok": D("0.2"),
                }
            ]
        if "nodes" in query:
            return [{"id": "n1", "region_code": "local"}]
        return []


def test_cache_reloads_on_notify_on_age_and_for_new_nodes() -> None:
    now = [100.0]
    source = FakeSource()
    cache = PriceCache(clock=lambda: now[0])

    async def book(*nodes: str) -> PriceBook:
        return await cache.book(source, node_ids=nodes)  # type: ignore[arg-type]

    async def scenario() -> None:
        first = await book("n1")
        assert source.loads == 1 and first.models[7][0].id == 1
        await book("n1")
        assert source.loads == 1  # in memory: no query per batch, let alone per row
        cache.invalidate("conn", 1, "crosslogic_prices", "{}")
        await book()
        assert source.loads == 2
        now[0] += price_store.RELOAD_EVERY_S
        await book()
        assert source.loads == 3
        await book("new-node")  # within a second of the last load: no reload yet
        assert source.loads == 3
        now[0] += price_store.NODES_EVERY_S
        await book("new-node")
        assert source.loads == 4
        source.fail = True
        cache.invalidate()
        kept = await book()  # a failed reload keeps the last good book...
        assert kept.models[7][0].id == 1 and source.loads == 5
        await book()  # ...and tries again next time
        assert source.loads == 6

    asyncio.run(scenario())


def test_exact_at_the_largest_values_the_columns_allow() -> None:
    """Up to 30 significant digits before the one rounding: the cost equals the exact
    rational value rounded half-even, computed here in integers."""
    big = rates("999999.999999", "999999.999999")
    discount = TenantPrice(1, TENANT, 7, T0, "discount", discount_percent=D("33.33"))
    book = PriceBook.of(
        versions=[PriceVersion(1, 7, T0, big)],
        overrides=[discount],
        multipliers={"x": D("9999.9999")},
    )
    tokens = 2**31 - 1  # usage_records' integer columns
    priced = cost(book, prompt_tokens=tokens, completion_tokens=tokens, region_code="x")
    exact = Fraction(2 * tokens) * Fraction("999999.999999") / 10**6
    exact = exact * Fraction("9999.9999") * (100 - Fraction("33.33")) / 100
    assert priced.cost == rounded(exact)


def rounded(exact: Fraction) -> Decimal:
    """``exact`` rounded half-even to 10 places, in integers."""
    scaled = exact * 10**10
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest > scaled.denominator or (2 * rest == scaled.denominator and whole % 2):
        whole += 1
    return D(whole).scaleb(-10)


price_digits = st.integers(0, 999_999_999_999).map(lambda n: D(n).scaleb(-6))


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.integers(0, 2**31 - 1),
    completion=st.integers(0, 2**31 - 1),
    listed=st.tuples(price_digits, price_digits, price_digits),
    contract=st.tuples(price_digits, price_digits, price_digits),
    multiplier=st.integers(1, 99_999_999).map(lambda n: D(n).scaleb(-4)),
    discount=st.integers(1, 10_000).map(lambda n: D(n).scaleb(-2)),
    kind=st.sampled_from(["list", "contract", "discount", "none"]),
    embeddings=st.booleans(),
)
def test_every_cost_is_the_exact_rational_value_rounded_once(
    prompt: int,
    completion: int,
    listed: tuple[Decimal, Decimal, Decimal],
    contract: tuple[Decimal, Decimal, Decimal],
    multiplier: Decimal,
    discount: Decimal,
    kind: str,
    embeddings: bool,
) -> None:
    """The cost of any request the columns allow, against the rules worked out in fractions
    (the book works out each period's terms once and reuses them: same result)."""
    overrides = []
    if kind == "contract":
        overrides = [TenantPrice(3, TENANT, 7, T0, "contract", rates=Rates(*contract))]
    elif kind in ("discount", "none"):
        percent = discount if kind == "discount" else None
        overrides = [TenantPrice(3, TENANT, 7, T0, kind, discount_percent=percent)]
    book = PriceBook.of(
        versions=[PriceVersion(1, 7, T0, Rates(*listed))],
        overrides=overrides,
        multipliers={"r": multiplier},
    )
    endpoint = "/v1/embeddings" if embeddings else "/v1/chat/completions"
    chosen = contract if kind == "contract" else listed
    if embeddings:
        exact = prompt * Fraction(chosen[2]) / 10**6
    else:
        exact = (prompt * Fraction(chosen[0]) + completion * Fraction(chosen[1])) / 10**6
    if kind != "contract":
        exact *= Fraction(multiplier)
    if kind == "discount":
        exact = exact * (100 - Fraction(discount)) / 100
    for _ in range(2):  # worked out, then from the book's terms
        priced = cost(
            book,
            endpoint=endpoint,
            prompt_tokens=prompt,
            completion_tokens=completion,
            region_code="r",
        )
        assert priced.cost == rounded(exact)
        assert priced.multiplier == (ONE if kind == "contract" else multiplier)
        assert priced.tenant_price_id == (None if kind == "list" else 3)


def test_terms_follow_each_version_and_override_in_time() -> None:
    """Terms are kept per period: a request after a new version or override is priced by
    it, one before it by the old ones, whatever the order the book sees them in."""
    discount = TenantPrice(5, TENANT, 7, T0 + timedelta(minutes=10), "discount", None, D(50))
    book = PriceBook.of(versions=[V1, V2], overrides=[discount])
    moments = [T1, T0, T0 + timedelta(minutes=10), T1 - timedelta(microseconds=1), T0]
    seen = [
        (p.price_id, p.tenant_price_id, p.cost) for p in (cost(book, started_at=m) for m in moments)
    ]
    assert seen == [
        (2, 5, D("0.0000140000")),
        (1, None, D("0.0000140000")),
        (1, 5, D("0.0000070000")),
        (1, 5, D("0.0000070000")),
        (1, None, D("0.0000140000")),
    ]
