"""The global layer's lease, pure: processes sharing one budget through a model of lease.lua
never admit more than it, give back what a later layer refused, and waste at most a slice
each."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from crosslogic.ratelimit.gcra import Limit
from crosslogic.ratelimit.lease import Ask, LeaseBook, slice_for


def global_limit(kind: str, value: int, *, cost: int = 1, period_s: int = 60) -> Limit:
    return Limit(
        layer="global",
        kind=kind,
        redis_key=f"crosslogic:rl:global:all:{kind}:{period_s}",
        limit=value,
        period_s=period_s,
        cost=cost,
    )


@dataclass
class Budget:
    """lease.lua with time frozen: what is left of the limit in Redis."""

    left: int

    def grant(self, limit: Limit, ask: Ask) -> int:
        if limit.kind == "tokens":
            granted = ask.units if self.left >= 1 else 0
        elif ask.units <= self.left:
            granted = ask.units
        else:
            granted = ask.least if 0 < ask.least <= self.left else 0
        self.left -= granted
        return granted


def admit(book: LeaseBook, budget: Budget, limit: Limit) -> bool:
    if book.take(limit):
        return True
    granted = budget.grant(limit, book.ask(limit))
    if not granted:
        return False
    book.granted(limit, granted, remaining=max(budget.left, 0), reset_after_s=1.0)
    return book.take(limit)


def test_slices_are_a_tenth_of_a_second_of_the_rate_and_at_least_one() -> None:
    assert slice_for(global_limit("requests", 12)) == 1
    assert slice_for(global_limit("requests", 1000, period_s=1)) == 100
    assert slice_for(global_limit("tokens", 600_000)) == 1000


@settings(max_examples=200, deadline=None)
@given(
    limit_value=st.integers(1, 3000),
    period_s=st.sampled_from([1, 60]),
    requests=st.lists(
        st.tuples(st.integers(0, 3), st.booleans()),  # (process, refused by a later layer)
        max_size=400,
    ),
)
def test_strict_limits_never_admit_more_than_the_budget(
    limit_value: int, period_s: int, requests: list[tuple[int, bool]]
) -> None:
    limit = global_limit("requests", limit_value, period_s=period_s)
    budget = Budget(limit_value)
    books = [LeaseBook(clock=lambda: 0.0) for _ in range(4)]
    admitted = 0
    refused = False
    for process, later_refuses in requests:
        if admit(books[process], budget, limit):
            if later_refuses:
                books[process].give_back(limit)  # nothing lost: the lease has it again
            else:
                admitted += 1
        else:
            refused = True
    assert admitted <= limit_value
    unused = sum(book.units(limit) for book in books)
    assert admitted + unused + budget.left == limit_value  # every unit accounted for
    assert 0 <= unused <= len(books) * slice_for(limit)  # the most the layer under-admits
    if refused:  # only once Redis has nothing left to lease
        assert budget.left == 0


@settings(max_examples=200, deadline=None)
@given(
    limit_value=st.integers(1, 100_000),
    costs=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5000)), max_size=200),
)
def test_debit_limits_overshoot_by_at_most_a_reservation_and_a_slice_per_process(
    limit_value: int, costs: list[tuple[int, int]]
) -> None:
    books = [LeaseBook(clock=lambda: 0.0) for _ in range(4)]
    budget = Budget(limit_value)
    admitted = 0
    for process, cost in costs:
        limit = global_limit("tokens", limit_value, cost=cost)
        if admit(books[process], budget, limit):
            admitted += cost
    biggest = max((cost for _, cost in costs), default=0)
    one_slice = slice_for(global_limit("tokens", limit_value))
    assert admitted <= limit_value + len(books) * (biggest + one_slice)


def test_a_lease_expires_but_its_debt_does_not() -> None:
    now = [0.0]
    book = LeaseBook(clock=lambda: now[0], lease_s=1.0)
    tokens = global_limit("tokens", 600_000, cost=5000)
    assert not book.take(tokens)
    ask = book.ask(tokens)
    assert ask == Ask(units=slice_for(tokens), least=0)
    book.granted(tokens, ask.units, remaining=0, reset_after_s=60)
    assert book.take(tokens)  # one unit was enough: 4000 in debt
    assert book.ask(tokens).units == 4000 + slice_for(tokens)
    requests = global_limit("requests", 600_000)
    book.granted(requests, 50, remaining=0, reset_after_s=60)
    now[0] = 1.5
    assert not book.take(requests)  # expired: units from another window are not spent
    assert book.ask(tokens).units == 4000 + slice_for(tokens)  # still owed
