"""Usage reports: the query parser (pure), then from the stack's aggregates through the admin
API (JSON and CSV, 400 and 404), the command line, and a tenant's own key through Envoy."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from crosslogic.admin import openapi
from crosslogic.billing import aggregation, reports
from crosslogic.billing.hours import HOUR
from crosslogic.contracts import routing
from crosslogic.errors import Invalid
from crosslogic.stack import Stack
from tests.support.admin import Admin
from tests.support.cli import Cli, cli_ok
from tests.support.db import connect_and
from tests.support.usage import Payer, add_usage, payer, unused_hour

NOW = datetime(2026, 11, 29, 20, 15, tzinfo=UTC)


def test_defaults_are_this_month_ungrouped_json() -> None:
    query = reports.parse_report({}, now=NOW)
    assert query == reports.ReportQuery(
        datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 29, 21, tzinfo=UTC), (), "json"
    )
    assert reports.parse_report({}, now=NOW, accept="text/csv").format == "csv"
    both = reports.parse_report({"group_by": "hour, model", "format": "json"}, now=NOW)
    assert both.group_by == ("model", "hour")  # the report's column order


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"from": "2026-11-01"}, "from"),
        ({"start": "last week"}, "start"),
        ({"start": "2026-11-02", "end": "2026-11-01"}, "end"),
        ({"group_by": "model,tenant"}, "group_by"),
        ({"group_by": "day,hour"}, "group_by"),
        ({"group_by": "model,model"}, "group_by"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_parameters_are_refused_naming_them(params: dict[str, str], param: str) -> None:
    with pytest.raises(Invalid) as bad:
        reports.parse_report(params, now=NOW)
    assert bad.value.param == param


def test_the_documented_groups_and_formats_are_the_parsers() -> None:
    parameters = openapi.document()["components"]["parameters"]
    assert parameters["UsageFormat"]["schema"]["enum"] == list(reports.FORMATS)
    for group in reports.GROUPS:
        assert group in parameters["UsageGroupBy"]["description"]
    assert parameters["TenantHeader"]["name"] == routing.TENANT_HEADER


def test_lines_are_exact_and_csv_has_the_same_columns() -> None:
    row = {
        "region": "",
        "day": datetime(2026, 11, 29, tzinfo=UTC),
        "requests": 2,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "cost_usd": Decimal("0.1000000001"),
    }
    line = reports.line(row, ("region", "day"))
    assert line == {
        "region": None,
        "day": "2026-11-29",
        "requests": 2,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "cost_usd": "0.1000000001",
    }
    report = {"group_by": ["region", "day"], "data": [line, line]}
    assert reports.totals([line, line])["cost_usd"] == "0.2000000002"
    rows = list(csv.reader(io.StringIO(reports.to_csv(report))))
    assert rows[0] == ["region", "day", *reports.MEASURES]
    assert rows[1] == ["", "2026-11-29", "2", "3", "4", "7", "0.1000000001"]


def usage_of(stack: Stack, hour: datetime | None = None) -> tuple[Payer, datetime]:
    """A new tenant with aggregated usage in two hours and two regions."""
    who, hour = payer(stack), hour or unused_hour()
    add_usage(stack, who, hour, count=3, cost=Decimal("0.0000000003"), region="local")
    add_usage(stack, who, hour, count=1, cost=Decimal("0.5"))
    add_usage(stack, who, hour + HOUR, count=2, cost=Decimal("0.25"))
    connect_and(stack, lambda conn: aggregation.aggregate_hours(conn, [hour, hour + HOUR]))
    return who, hour


def get(url: str, headers: dict[str, str]) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def zulu(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")  # '+' in a query string is a space


def test_admin_report_groups_and_sums_exactly(stack: Stack, admin: Admin) -> None:
    who, hour = usage_of(stack)
    span = f"start={zulu(hour)}&end={zulu(hour + 2 * HOUR)}"
    status, report = admin("GET", f"/admin/usage/{who.tenant_id}?{span}&group_by=region,hour")
    assert status == 200, report
    assert [(x["region"], x["hour"], x["requests"], x["cost_usd"]) for x in report["data"]] == [
        (None, hour.isoformat(), 1, "0.5000000000"),
        (None, (hour + HOUR).isoformat(), 2, "0.5000000000"),
        ("local", hour.isoformat(), 3, "0.0000000009"),
    ]
    assert report["total"]["requests"] == 6
    assert report["total"]["cost_usd"] == "1.0000000009"
    assert report["total"]["total_tokens"] == 6 * 30
    status, whole = admin("GET", f"/admin/usage/{who.tenant_id}?{span}")
    assert [x["requests"] for x in whole["data"]] == [6]
    status, days = admin("GET", f"/admin/usage/{who.tenant_id}?{span}&group_by=day,model")
    dates = sorted({str(hour.date()), str((hour + HOUR).date())})
    assert [(x["day"], x["model"]) for x in days["data"]] == [(d, "demo-llama") for d in dates]


def test_admin_report_as_csv_by_format_or_accept(stack: Stack, admin: Admin) -> None:
    who, hour = usage_of(stack)
    query = f"start={hour.date()}&end={zulu(hour + 2 * HOUR)}&group_by=environment"
    url = f"{stack.admin_url}/admin/usage/{who.tenant_id}?{query}"
    auth = {"Authorization": admin.headers["Authorization"]}
    for extra, headers in (("&format=csv", auth), ("", {**auth, "Accept": "text/csv"})):
        status, kind, text = get(url + extra, headers)
        assert (status, kind.split(";")[0]) == (200, "text/csv"), text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["environment"], r["requests"], r["cost_usd"]) for r in rows] == [
            ("prod", "6", "1.0000000009")
        ]


def test_admin_report_refusals(stack: Stack, admin: Admin) -> None:
    who, _ = usage_of(stack)
    status, body = admin("GET", f"/admin/usage/{who.tenant_id}?group_by=colour")
    assert status == 400 and body["error"]["param"] == "group_by"
    status, body = admin("GET", f"/admin/usage/{who.tenant_id}?start=soon")
    assert status == 400 and body["error"]["param"] == "start"
    status, body = admin("GET", "/admin/usage/00000000-0000-0000-0000-000000000000")
    assert status == 404 and body["error"]["code"] == "tenant_not_found"
    status, body = admin("GET", "/admin/usage/not-a-uuid")
    assert status == 404


def test_a_tenant_reads_its_own_usage_through_envoy_and_no_one_elses(stack: Stack) -> None:
    mine, hour = usage_of(stack)
    theirs, _ = usage_of(stack, hour)
    url = f"{stack.base_url}/usage?start={zulu(hour)}&end={zulu(hour + 2 * HOUR)}"
    for who in (mine, theirs):
        # a client-sent tenant header is stripped by Envoy before ext_authz sets the real one
        headers = {"Authorization": f"Bearer {who.key}", routing.TENANT_HEADER: mine.tenant_id}
        status, _, text = get(url, headers)
        assert status == 200, text
        report: dict[str, Any] = json.loads(text)
        assert report["tenant_id"] == who.tenant_id
        assert report["total"]["requests"] == 6, report
    status, _, text = get(url, {"Authorization": "Bearer clk_nope_nope"})
    assert status == 401, text
    status, _, text = get(url + "&group_by=week", {"Authorization": f"Bearer {mine.key}"})
    assert status == 400 and json.loads(text)["error"]["param"] == "group_by"
    # the control plane answers it only with ext_authz's header
    status, _, text = get(f"{stack.admin_url}/v1/usage", {})
    assert status == 401


def test_cli_report_json_csv_and_exit_statuses(stack: Stack, cli: Cli) -> None:
    who, hour = usage_of(stack)
    start = ["--tenant", who.tenant_id, "--start", str(hour.date()), "--end", zulu(hour + 9 * HOUR)]
    report = cli_ok(cli("billing", "report", *start, "--group-by", "hour"))
    assert [x["requests"] for x in report["data"]] == [4, 2]
    code, out, _ = cli("billing", "report", *start, "--format", "csv")
    assert code == 0
    assert out.splitlines() == [",".join(reports.MEASURES), "6,60,120,180,1.0000000009"]
    code, _, err = cli("billing", "report", "--tenant", who.tenant_id, "--group-by", "x")
    assert code == 2 and "'group_by'" in err
    code, _, err = cli("billing", "report", "--tenant", "00000000-0000-0000-0000-000000000000")
    assert code == 1 and "tenant" in err
