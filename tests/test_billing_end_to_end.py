"""Issue 9's end-to-end billing test: a few hundred mixed requests through Envoy with the
openai SDK (chat, completions, embeddings; streamed and not; streams and non-streaming
requests abandoned by the client; requests refused by a rate limit) while billing is killed
once and PostgreSQL once (both restarted by the supervisor). Then, request by request: one
usage row per admitted request, its tokens as the node reported them, its cost by the price
rules and the price version recorded on the row; the hourly aggregates equal the rows
(``billing reconcile`` exits 0); the Stripe double received each (hour, model, meter) total
once; re-running aggregation and export changes nothing."""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai
import pytest

from crosslogic.billing.pricing import PriceBook, PriceVersion, Rates
from crosslogic.cli import main
from crosslogic.errors import Unavailable
from crosslogic.extauthz.decision import estimate_prompt, estimate_tokens
from crosslogic.settings import to_env
from crosslogic.stack import Stack
from crosslogic.supervisor import Child
from tests.support.db import run_db
from tests.support.mixed_load import (
    ABANDONED,
    ENDPOINT,
    KINDS,
    LEFT_MAX_TOKENS,
    Outcome,
    abandon,
    abandoned_body,
    send,
)
from tests.support.stripe_double import StripeDouble, stripe_double
from tests.support.system import own_system
from tests.support.tenants import demo_key, fresh_tenant
from tests.support.waiting import wait_until

REQUESTS = 300  # at least, through the main key, besides the refused and abandoned ones
LOAD_CLIENTS = 6
TOKENS_PER_S = 200  # the simulated nodes' pace
LIMITED_RPM, LIMITED_SENT = 5, 12  # a key allowed 5 requests a minute sends 12


def kill_and_wait(stack: Stack, name: str) -> None:
    """SIGKILL one child; return once the supervisor has restarted it."""
    child: Child = next(c for c in stack.supervisor.children if c.name == name)
    restarts = child.restarts
    child.proc.kill()
    wait_until(
        f"{name} to be restarted",
        lambda: child.restarts > restarts and child.proc.poll() is None,
        timeout=30,
        check=stack.supervisor.check,
    )


def postgres_answers(stack: Stack) -> bool:
    try:
        return bool(run_db(stack, "SELECT 1"))
    except Unavailable:
        return False


class Cli:
    """``crosslogic ...`` in-process, against the system's settings (env) and the double."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def use(self, stack: Stack) -> None:
        for name, value in to_env(stack.settings).items():
            self._monkeypatch.setenv(name, value)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = main(list(argv))
        out, err = self._capsys.readouterr()
        return code, out, err


@pytest.fixture()
def double() -> Iterator[StripeDouble]:
    with stripe_double() as d:
        yield d


@pytest.fixture(params=["grpc", "http"])
def e2e(double: StripeDouble, request: pytest.FixtureRequest) -> Iterator[Stack]:
    with own_system(
        nodes=0,
        stripe_secret_key="sk_test_e2e",
        stripe_api_base=double.url,
        extauthz_protocol=request.param,
    ) as running:
        for i in (1, 2):  # paced, so that a client can leave a stream before its end
            running.start_node(f"e2e-{i}", extra=("--tokens-per-second", str(TOKENS_PER_S)))
        running.wait_healthy_nodes(2)
        yield running


def test_every_request_is_billed_once_exactly_aggregated_and_exported_once(
    e2e: Stack,
    double: StripeDouble,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = e2e
    cli = Cli(monkeypatch, capsys)
    cli.use(stack)
    started = datetime.now(UTC)
    tenant, env = fresh_tenant(stack)
    cus = f"cus_e2e{started.strftime('%H%M%S')}"
    assert cli("billing", "customer", tenant, cus)[0] == 0
    main_key = demo_key(stack, environment_id=env, name="e2e", rate_limit_rpm=1_000_000)
    limited = demo_key(stack, environment_id=env, name="e2e-limited", rate_limit_rpm=LIMITED_RPM)
    leaver = demo_key(stack, environment_id=env, name="e2e-leaver")
    client = openai.OpenAI(
        base_url=stack.base_url, api_key=main_key.plaintext, max_retries=0, timeout=15
    )

    outcomes: list[Outcome] = []
    progress = threading.Condition()
    stop = threading.Event()

    def load(index: int) -> None:
        n = index
        while not stop.is_set():
            outcome = send(client, KINDS[n % len(KINDS)], n)
            n += LOAD_CLIENTS
            with progress:
                outcomes.append(outcome)
                progress.notify_all()

    def sent_at_least(count: int) -> int:
        with progress:
            assert progress.wait_for(lambda: len(outcomes) >= count, timeout=60), len(outcomes)
            return len(outcomes)

    limited_client = openai.OpenAI(
        base_url=stack.base_url, api_key=limited.plaintext, max_retries=0
    )
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        clients = [pool.submit(load, i) for i in range(LOAD_CLIENTS)]
        try:
            sent_at_least(REQUESTS // 4)
            kill_and_wait(stack, "billing-1")
            # new keys: ext_authz reads them from PostgreSQL, so before its outage
            with ThreadPoolExecutor(len(ABANDONED)) as leavers:
                list(leavers.map(lambda e: abandon(stack, leaver, e), ABANDONED))
            limited_outcomes = [send(limited_client, "chat", n) for n in range(LIMITED_SENT)]
            at_kill = sent_at_least(REQUESTS // 2)
            kill_and_wait(stack, "postgres")
            wait_until("PostgreSQL to answer", lambda: postgres_answers(stack), timeout=30)
            sent_at_least(max(REQUESTS, at_kill + REQUESTS // 4))
        finally:
            stop.set()
        for future in clients:
            future.result()

    errors = collections.Counter(o.error for o in outcomes if o.error)
    assert not errors, errors
    admitted = [o for o in limited_outcomes if o.error is None]
    refused = [o for o in limited_outcomes if o.error is not None]
    assert len(admitted) == LIMITED_RPM, limited_outcomes
    assert {o.error for o in refused} == {"HTTP 429 rate_limit_exceeded"}, refused
    answered = {o.request_id: o for o in outcomes + admitted}
    assert None not in answered and len(answered) == len(outcomes) + LIMITED_RPM

    # every admitted request has exactly one usage row, and nothing else was billed
    expected_rows = len(outcomes) + LIMITED_RPM + len(ABANDONED)

    def all_rows() -> list[dict[str, Any]] | None:
        found = run_db(stack, "SELECT * FROM usage_records WHERE tenant_id = $1", tenant)
        return [dict(r) for r in found] if len(found) >= expected_rows else None

    rows = wait_until("every usage row", all_rows, timeout=60)
    assert len(rows) == expected_rows
    by_id = collections.defaultdict(list)
    for row in rows:
        by_id[row["request_id"]].append(row)
    assert all(len(found) == 1 for found in by_id.values())
    assert set(answered) <= set(by_id)
    per_key = collections.Counter(str(row["api_key_id"]) for row in rows)
    assert per_key[limited.api_key_id] == LIMITED_RPM

    # token counts: what the node answered; abandoned requests at their estimate, flagged
    for request_id, outcome in answered.items():
        (row,) = by_id[request_id]
        assert row["endpoint"] == ENDPOINT[outcome.kind]
        if outcome.kind == "left-stream":
            # billed from what it was sent: its prompt estimate and the tokens streamed
            assert row["streamed"] is True and row["usage_estimated"] is True, row
            assert row["prompt_tokens"] > 0 and row["completion_tokens"] < LEFT_MAX_TOKENS
            continue
        assert outcome.usage == (row["prompt_tokens"], row["completion_tokens"]), row
        assert row["usage_estimated"] is False
    left = [row for row in rows if str(row["api_key_id"]) == leaver.api_key_id]
    assert sorted(row["endpoint"] for row in left) == sorted(ABANDONED)
    for row in left:
        body = abandoned_body(row["endpoint"])
        prompt, total = (
            estimate_prompt(row["endpoint"], body),
            estimate_tokens(row["endpoint"], body),
        )
        assert isinstance(total, int)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, total - prompt)
        assert row["usage_estimated"] is True and row["status_code"] == 0

    # costs: the pure price function, with the price version and multiplier on the row
    versions = {
        r["id"]: PriceVersion(
            r["id"],
            r["model_id"],
            r["effective_at"],
            Rates(r["prompt_per_mtok"], r["completion_per_mtok"], r["embedding_per_mtok"]),
        )
        for r in run_db(stack, "SELECT * FROM model_prices")
    }
    for row in rows:
        assert row["price_id"] is not None and row["tenant_price_id"] is None, row
        version = versions[row["price_id"]]
        book = PriceBook.of(
            versions=[version], multipliers={row["region_code"]: row["price_multiplier"]}
        )
        priced = book.price(
            tenant_id=tenant,
            model_id=row["model_id"],
            endpoint=row["endpoint"],
            started_at=row["started_at"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            region_code=row["region_code"],
        )
        assert priced.cost == row["cost_usd"] and priced.price_id == row["price_id"], row
    assert sum(row["cost_usd"] for row in rows) > 0

    # aggregation: the hours equal the sums of the rows; reconcile agrees
    since = started.replace(minute=0, second=0, microsecond=0).isoformat()
    assert cli("billing", "aggregate", "--since", since)[0] == 0
    code, out, err = cli("billing", "reconcile", "--since", since)
    assert code == 0, out + err
    sums: dict[tuple[datetime, int], list[Any]] = collections.defaultdict(
        lambda: [0, 0, 0, Decimal(0)]
    )
    for row in rows:
        hour = row["started_at"].replace(minute=0, second=0, microsecond=0)
        total = sums[(hour, row["model_id"])]
        total[0] += 1
        total[1] += row["prompt_tokens"]
        total[2] += row["completion_tokens"]
        total[3] += row["cost_usd"]

    def hourly() -> dict[tuple[datetime, int], list[Any]]:
        found: dict[tuple[datetime, int], list[Any]] = collections.defaultdict(
            lambda: [0, 0, 0, Decimal(0)]
        )
        for r in run_db(stack, "SELECT * FROM usage_hourly WHERE tenant_id = $1", tenant):
            total = found[(r["hour"], r["model_id"])]
            total[0] += r["request_count"]
            total[1] += r["prompt_tokens"]
            total[2] += r["completion_tokens"]
            total[3] += r["cost_usd"]
        return dict(found)

    aggregates = hourly()
    assert aggregates == dict(sums)

    # export: each (hour, model, meter) total reached the double exactly once
    def export() -> dict[str, Any]:
        def done() -> tuple[int, str, str] | None:
            outcome = cli("billing", "export")
            return None if outcome[0] == 75 else outcome  # the service's run: wait for it

        code, out, err = wait_until("an export run", done, timeout=30)
        assert code == 0, out + err
        result: dict[str, Any] = json.loads(out)
        return result

    assert export()["failed"] == 0
    sent: dict[str, int] = collections.Counter()
    for form in double.events():
        if form["payload[stripe_customer_id]"] == cus:
            sent[form["identifier"].rstrip("0123456789")] += int(form["payload[value]"])
    expected: dict[str, int] = {}
    for (hour, model_id), (_, prompt, completion, _) in aggregates.items():
        prefix = f"cl_{tenant}_{int(hour.timestamp())}_{model_id}_"
        expected[prefix + "p"] = prompt
        if completion:
            expected[prefix + "c"] = completion
    assert dict(sent) == expected
    sends = collections.Counter(
        r.form["identifier"]
        for r in double.requests
        if r.form.get("payload[stripe_customer_id]") == cus
    )
    assert set(sends.values()) == {1}, sends  # no failure asked: each event sent once
    statuses = run_db(stack, "SELECT status FROM billing_events WHERE tenant_id = $1", tenant)
    assert {r["status"] for r in statuses} == {"sent"}

    # re-running aggregation and export twice changes nothing
    requests_before = len(double.requests)
    for _ in range(2):
        assert cli("billing", "aggregate", "--since", since)[0] == 0
        assert export()["planned"] == 0
        assert cli("billing", "reconcile", "--since", since)[0] == 0
    assert hourly() == aggregates
    assert len(double.requests) == requests_before
