"""The PostgreSQL connection budget: its arithmetic, `crosslogic db-connections`, and a
running system's pg_stat_activity held against it, name by name."""

from __future__ import annotations

import pytest

from crosslogic.cli import main
from crosslogic.db.budget import COMMAND, PRIMARY, REPLICA, budget
from crosslogic.services import SERVICES
from crosslogic.settings import load
from tests.support.admin import Admin
from tests.support.inference import ask
from tests.support.pg_activity import busy_admin, sample_connections
from tests.support.system import own_system

TWO_EACH = {"EXTAUTHZ_WORKERS": "2", "RATELIMIT_WORKERS": "2"}


def totals(**env: str) -> dict[str, int]:
    return {s.service: s.total() for s in budget(load({**TWO_EACH, **env})).services}


def test_the_default_shape() -> None:
    # admin 5; xds 2 x (2 + LISTEN); ext_authz 2 x (4 + 1 + the limiter's 2 + 1), deciding the
    # limits (RATELIMIT_AT=authz): no rate-limit service; billing 3 + 1
    assert totals() == {"admin": 5, "xds": 6, "extauthz": 16, "ratelimit": 0, "billing": 4}
    assert budget(load(TWO_EACH)).total() == 31
    assert budget(load(TWO_EACH)).servers() == (PRIMARY,)


def test_pool_settings_and_processes_multiply() -> None:
    found = budget(load({**TWO_EACH, "EXTAUTHZ_WORKERS": "8", "EXTAUTHZ_DB_POOL": "3"}))
    extauthz = next(s for s in found.services if s.service == "extauthz")
    assert (extauthz.processes, extauthz.pool(), extauthz.dedicated()) == (8, 3 + 2, 2)
    assert extauthz.total() == 56
    assert found.total() == 5 + 6 + 56 + 4
    assert totals(ADMIN_DB_POOL="1", XDS_REPLICAS="3", XDS_DB_POOL="1")["xds"] == 6
    assert totals(ADMIN_DB_POOL="1")["admin"] == 1


def test_decisions_in_the_rate_limit_service_move_the_limiter_there() -> None:
    shape = totals(RATELIMIT_AT="service", RATELIMIT_DB_POOL="3")
    # ext_authz: its pool and LISTEN; the rate-limit service: the limiter's pool and LISTEN
    assert shape["extauthz"] == 2 * (4 + 1)
    assert shape["ratelimit"] == 2 * (3 + 1)
    limits = budget(load({**TWO_EACH, "RATELIMIT_AT": "service"})).limits()
    assert limits[(PRIMARY, "crosslogic-ratelimit-listen")] == 2
    assert (PRIMARY, "crosslogic-extauthz-limits-listen") not in limits
    limits = budget(load(TWO_EACH)).limits()
    assert limits[(PRIMARY, "crosslogic-extauthz-limits-listen")] == 2


def test_scaled_out_each_gateway_adds_a_billing_and_serve_can_leave_it_out() -> None:
    scaled = budget(load({**TWO_EACH, "GATEWAYS": "3", "ADMIN_WORKERS": "2"}))
    assert {s.service: s.total() for s in scaled.services} == {
        "admin": 2 * 5,
        "xds": 6,
        "extauthz": 16,
        "ratelimit": 0,
        "billing": 3 * (3 + 1),
    }
    # a control-plane machine whose gateways run their own billing (`serve --without billing`)
    assert budget(load(TWO_EACH), without={"billing"}).total() == 31 - 4


def test_a_replica_gets_the_admin_read_pool() -> None:
    found = budget(load({**TWO_EACH, "DB_READ_HOST": "replica", "ADMIN_DB_POOL": "3"}))
    assert found.servers() == (PRIMARY, REPLICA)
    assert found.total(REPLICA) == 3
    assert found.total(PRIMARY) == 3 + 6 + 16 + 4  # the primary's share is unchanged
    assert found.limits()[(REPLICA, "crosslogic-admin-read")] == 3


def test_every_service_and_name_is_accounted_once() -> None:
    found = budget(load(TWO_EACH))
    assert [s.service for s in found.services] == [s.name for s in SERVICES]
    names = [h.application_name for s in found.services for h in s.holders]
    assert len(names) == len(set(names))
    assert all(n.startswith("crosslogic-") and n != COMMAND for n in names)


def test_the_command_prints_the_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {**TWO_EACH, "EXTAUTHZ_WORKERS": "8", "DB_READ_HOST": "10.0.0.2"}.items():
        monkeypatch.setenv(name, value)
    assert main(["db-connections"]) == 0
    out = capsys.readouterr().out
    assert "primary (DB_HOST=" in out and "at most 79 connections" in out
    assert "replica (DB_READ_HOST=10.0.0.2:5432): at most 5 connections" in out
    row = next(line for line in out.splitlines() if line.startswith("extauthz"))
    assert row.split()[:5] == ["extauthz", "8", "6", "2", "64"]
    assert "crosslogic-extauthz-listen" in row


def test_a_running_system_stays_within_its_budget() -> None:
    with own_system(nodes=1, admin_db_pool=2) as stack:
        assert stack.demo is not None
        ask(stack, stack.demo.api_key)  # ext_authz and the limiter read their tables
        limits = budget(stack.settings).limits()
        # the admin pool under concurrent requests: it grows to its setting, never past it
        with busy_admin(Admin(stack)):
            seen = sample_connections(
                stack.settings, seconds=2.0, until=lambda seen: seen.get("crosslogic-admin") == 2
            )
        unnamed = [n for n in seen if not n.startswith("crosslogic-")]
        assert not unnamed, f"connections without a crosslogic application_name: {unnamed}"
        over = {n: c for n, c in seen.items() if c > limits.get((PRIMARY, n), 0)}
        assert not over, f"over budget {over} (budget {limits})"
        assert seen["crosslogic-admin"] == 2  # ADMIN_DB_POOL, reached
        for holder in ("xds", "extauthz", "extauthz-limits", "billing"):
            assert seen[f"crosslogic-{holder}-listen"] >= 1, seen
