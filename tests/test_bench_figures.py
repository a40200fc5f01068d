"""The benchmark's own pieces: its arithmetic and tables (pure), the CPU accounting of process
trees (real processes), and post.lua's pacing (wrk against a real fixed-response Envoy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench import resources
from bench.costs import CpuUsage, order
from bench.envoys import BaselineEnvoys
from bench.histogram import Histogram
from bench.keycache import KeyCacheMemory, record
from bench.report import Billing, GatewayRun, Target
from bench.services import HalfLoad, ServiceLatency
from bench.summary import GatewayFigures, markdown
from bench.unloaded import Unloaded
from bench.wrk import Load, WrkResult, run_wrk


def wrk_result(*, requests: int = 1000, p50_ms: float = 1.0, p99_ms: float = 2.0) -> WrkResult:
    return WrkResult(requests, 1.0, 0, 0, p50_ms, p99_ms, p50_ms)


def latency(p99_bucket: float, *, budget_ms: float) -> ServiceLatency:
    """All samples in the bucket ending at ``p99_bucket`` seconds."""
    buckets = ((0.0005, 0.0), (p99_bucket, 100.0), (float("inf"), 100.0))
    return ServiceLatency("check", Histogram(buckets), budget_ms)


def test_cpu_per_request_and_the_cores_a_rate_needs() -> None:
    cpu = CpuUsage(
        {"envoy": 0.5, "extauthz-1": 1.0, "postgres": 0.5},
        load_generator=3.0,
        upstream=1.0,
        requests=1000,
    )
    assert cpu.per_request_us(cpu.system["envoy"]) == pytest.approx(500)
    assert cpu.system_us == pytest.approx(2000)  # wrk and the upstream are not the system
    assert cpu.cores_for_rate == pytest.approx(20.0)  # 10,000/s x 2 ms
    assert "target <= 6: missed" in cpu.cores_line()
    cheap = CpuUsage({"envoy": 0.3}, load_generator=0, upstream=0, requests=1000)
    assert cheap.cores_for_rate == pytest.approx(3.0) and "met" in cheap.cores_line()


def test_budgets_and_unloaded_targets() -> None:
    assert latency(0.004, budget_ms=5).budget().endswith("(budget < 5 ms: met)")
    assert latency(0.004, budget_ms=2).budget().endswith("(budget < 2 ms: missed)")
    unloaded = Unloaded(
        wrk_result(p50_ms=0.2, p99_ms=0.5),
        wrk_result(p50_ms=0.3, p99_ms=0.7),
        wrk_result(p50_ms=1.5, p99_ms=3.2),
        "(c) gateway",
    )
    assert unloaded.added() == pytest.approx((1.2, 2.5))
    assert "p50 added +1.20 ms (target <= 1 ms: missed)" in unloaded.targets_text()
    assert "p99 added +2.50 ms (target <= 3 ms: met)" in unloaded.targets_text()
    assert unloaded.rows()[2] == "| (c) gateway | 1.50 ms | 3.20 ms | +1.20 ms | +2.50 ms |"


def test_the_summary_has_every_figure() -> None:
    cpu = CpuUsage({"envoy": 0.5, "billing-1": 0.1}, load_generator=1, upstream=1, requests=1000)
    run = GatewayRun(
        target=Target("(c) gateway", wrk_result(requests=400)),
        services=[latency(0.004, budget_ms=5)],
        billing=Billing(completed=400, in_flight=64, recorded=400, exact=400),
        ratelimit_failed_open=0,
        cpu=cpu,
        memory={"envoy": 50 * 2**20, "billing-1": 80 * 2**20},
    )
    half = HalfLoad(200.0, wrk_result(requests=199), [latency(0.001, budget_ms=2)])
    unloaded = Unloaded(wrk_result(), wrk_result(), wrk_result(p50_ms=2.0), "(c) gateway")
    text = markdown(
        Target("(a) upstream", wrk_result(requests=4000)),
        Target("(b) plain Envoy", wrk_result(requests=1000)),
        [GatewayFigures("c", run, half, unloaded)],
        key_cache=KeyCacheMemory(keys=1_000_000, grown_bytes=500 * 2**20),
        note="one machine",
    )
    assert "| (c) gateway | 400 | 1.00 ms | 2.00 ms | 10% | 40% |" in text
    assert "| **the system** | **600** |" in text
    assert "| cores for 10,000 req/s (target <= 6) | 6.0 |" in text
    assert "| apart: wrk | 1000 |" in text
    assert "| billing-1 | 80 MB |" in text
    assert "(budget < 2 ms: met)" in text
    assert "500 MB per million cached keys" in text
    assert text.index("| gateway Envoy | 500 |") < text.index("| billing-1 | 100 |")
    assert order(["xds-1", "postgres", "extauthz-2", "envoy", "extauthz-1", "ratelimit-1"]) == [
        "envoy",
        "extauthz-1",
        "extauthz-2",
        "ratelimit-1",
        "postgres",
        "xds-1",
    ]


def test_key_records_are_built_as_the_database_adapter_builds_them() -> None:
    one, two = record(1), record(2)
    assert one.api_key_id != two.api_key_id and len(one.api_key_id) == 36
    # the rows bring fresh strings; the adapter shares what many keys have in common
    assert one.key_status == "active" and one.key_status is two.key_status
    assert one.tenant_id == two.tenant_id and one.tenant_id is two.tenant_id
    assert one.api_key_id is not two.api_key_id


def test_a_tree_counts_its_children_also_those_that_ended() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time\n"
            f"subprocess.run([sys.executable, '-c', {burn!r}])\nprint('reaped', flush=True)\n"
            "time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        # the child burns 0.3 s and is reaped: its time moves to the parent's children_*
        assert parent.stdout is not None and parent.stdout.readline() == b"reaped\n"
        assert psutil.Process(parent.pid).children() == []
        assert resources.tree_cpu_seconds(parent.pid) >= 0.3
        assert resources.tree_rss(parent.pid) > 0
    finally:
        parent.kill()
        parent.wait()
    assert resources.tree_cpu_seconds(parent.pid) == 0.0  # gone: nothing, no error


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_post_lua_paces_requests_on_a_fixed_schedule(tmp_path: Path) -> None:
    envoys = BaselineEnvoys(tmp_path, concurrency=1)
    try:
        port = envoys.start_upstream()
        load = Load(connections=16, threads=2, duration_s=2, warmup_s=0)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        result = run_wrk(url, load=load, duration_s=2, rate=200)
    finally:
        envoys.stop()
    assert result.status_errors == 0
    assert 180 <= result.rps <= 215  # 200/s offered, whatever the responses take
