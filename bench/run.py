"""One benchmark run: (a) the upstream alone, (b) plain Envoy, (c)-(e) the whole gateway in
three configurations, then (b') plain Envoy and (f) the gateway with TLS on the listener."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench import pipeline, resources
from bench.costs import CpuUsage, memory_line
from bench.envoys import BaselineEnvoys
from bench.gateway import Gateway
from bench.histogram import scrape
from bench.keycache import measure_apart
from bench.report import Billing, GatewayRun, Target, comparison, line, machine_note
from bench.scale import scale_figures
from bench.services import grown, half_load
from bench.summary import GatewayFigures, markdown
from bench.tls import TlsFigures, start_plain_tls
from bench.unloaded import unloaded_latency
from bench.wrk import Load, WrkResult, measure, run_wrk
from bench.xds import build_figures
from crosslogic.shapes import SHAPES

CHAT = "/v1/chat/completions"
# their work for a run goes on after wrk stops: their CPU is read once billing consumed it
BILLING_SIDE = ("billing", "postgres", "redis")


def announce(text: str) -> None:
    print(text, flush=True)


def check_errors(label: str, result: WrkResult) -> None:
    if result.status_errors or result.socket_errors:
        announce(
            f"WARNING: {label}: {result.status_errors:,} responses with status >= 400 and "
            f"{result.socket_errors:,} socket errors/timeouts (expected 0)"
        )


def run_gateway(gateway: Gateway, *, load: Load, label: str, upstream_pid: int) -> GatewayRun:
    """The saturation run, with the CPU time every process spent on it and memory after it."""
    auth = f"Bearer {gateway.api_key}"
    completed, runs = 0, 1
    if load.warmup_s > 0:
        runs += 1
        warmup = run_wrk(gateway.url, load=load, duration_s=load.warmup_s, authorization=auth)
        completed += warmup.requests
        gateway.wait_for_billing(completed)  # its lag would count as the measured run's CPU
    before, failures_before = scrape(gateway.metrics_url), gateway.ratelimit_failures()
    rows_before = pipeline.sample(gateway.metrics_url, pipeline.RECORDS)
    pids = resources.supervised(gateway.stack.supervisor)
    cpu_before, upstream_before = (
        resources.cpu_sample(pids),
        resources.tree_cpu_seconds(upstream_pid),
    )
    wrk_before = resources.reaped_cpu_seconds()
    with pipeline.LagSampler(gateway.metrics_url) as lag:
        result = run_wrk(gateway.url, load=load, duration_s=load.duration_s, authorization=auth)
    wrk_cpu = resources.reaped_cpu_seconds() - wrk_before
    cpu_after = resources.cpu_sample(pids)  # the request path's, before any idle wait
    upstream_cpu = resources.tree_cpu_seconds(upstream_pid) - upstream_before
    rows_after = pipeline.sample(gateway.metrics_url, pipeline.RECORDS)
    after, failures_after = scrape(gateway.metrics_url), gateway.ratelimit_failures()
    completed += result.requests
    announce(f"waiting up to 20 s for billing to record {completed:,} requests...")
    recorded, exact = gateway.wait_for_billing(completed)
    late = {name: pid for name, pid in pids.items() if name.startswith(BILLING_SIDE)}
    cpu = resources.grown(cpu_before, {**cpu_after, **resources.cpu_sample(late)})
    billing = Billing(
        completed=completed,
        in_flight=load.connections * runs,
        recorded=recorded,
        exact=exact,
        rows_per_s=(rows_after - rows_before) / result.duration_s,
        lag_p50_s=lag.percentile(0.5),
        lag_max_s=lag.percentile(1.0),
    )
    return GatewayRun(
        target=Target(label, result),
        services=grown(before, after),
        billing=billing,
        ratelimit_failed_open=failures_after - failures_before,
        cpu=CpuUsage(cpu, load_generator=wrk_cpu, upstream=upstream_cpu, requests=result.requests),
        memory=resources.rss_sample(pids),
    )


def run_baseline(label: str, url: str, *, load: Load) -> Target:
    target = Target(label, measure(url, load=load))
    announce(line(target))
    check_errors(label, target.result)
    return target


def print_results(a: Target, b: Target, gateway: GatewayRun) -> None:
    c, billing = gateway.target, gateway.billing
    announce(line(c))
    check_errors(c.label, c.result)
    for text in comparison(a, b, c):
        announce(text)
    for s in gateway.services:
        announce(
            f"{s.label}: p50 {s.cell(0.5)}, p99 {s.cell(0.99)} ({s.histogram.count:,.0f} samples)"
        )
    for text in [*gateway.cpu.lines(), memory_line(gateway.memory)]:
        announce(text)
    if gateway.ratelimit_failed_open:
        announce(
            f"WARNING: {gateway.ratelimit_failed_open:,} rate-limit calls failed or timed "
            "out and were let through unlimited (Envoy's ratelimit.error)"
        )
    announce(f"billing: {billing.summary()}")
    if not billing.consistent:
        announce("WARNING: billing is missing requests, miscounted tokens or has extra rows")


def run(load: Load, *, envoy_concurrency: int) -> None:
    """Everything started here is stopped before returning, also on error or Ctrl-C. The work
    directory (configs, logs, the database) is removed, unless an error happened: then it is
    kept for diagnosis and its path printed."""
    # short: PostgreSQL's Unix socket lives below it and socket paths are limited to ~107 bytes
    work_dir = Path(tempfile.mkdtemp(prefix="clb-", dir="/tmp"))
    envoys = BaselineEnvoys(work_dir, concurrency=envoy_concurrency)
    # (c), (d), (e): three shapes, the default last; (f): the default over TLS
    gateway, in_authz, over_http, over_tls = (
        Gateway(work_dir / f"stack-{shape}", envoy_concurrency=envoy_concurrency, **settings)
        for shape, settings in (
            ("service", SHAPES["service"]),
            ("authz", SHAPES["authz"]),
            ("http", SHAPES["http"]),
            ("tls", {**SHAPES["http"], "listener_tls": "on"}),
        )
    )
    failed = False

    def tidy() -> None:
        if failed:
            announce(f"logs and configs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    with ExitStack() as cleanup:  # every callback runs, even after one raised
        cleanup.callback(tidy)
        cleanup.callback(envoys.stop)
        cleanup.callback(gateway.stop)
        cleanup.callback(in_authz.stop)
        cleanup.callback(over_http.stop)
        cleanup.callback(over_tls.stop)
        try:
            run_targets(
                load,
                envoys=envoys,
                gateways=(gateway, in_authz, over_http),
                over_tls=over_tls,
                envoy_concurrency=envoy_concurrency,
            )
        except Exception:
            failed = True
            raise


def run_tls_pair(
    load: Load, *, envoys: BaselineEnvoys, gateway: Gateway, b: Target, e: GatewayRun | None
) -> TlsFigures:
    """(b') plain Envoy and (f) the gateway as (e), both with TLS on the listener."""
    upstream_port = envoys.ports["upstream"]
    plain_tls_port = start_plain_tls(envoys, upstream_port=upstream_port)
    announce("(b') loading a plain Envoy with TLS on its listener...")
    plain_tls = run_baseline(
        "(b') plain Envoy over TLS → upstream",
        f"https://127.0.0.1:{plain_tls_port}{CHAT}",
        load=load,
    )
    announce("(f) starting the whole system as (e), with TLS on the listener (LISTENER_TLS=on)...")
    gateway.start(upstream_port=upstream_port)
    upstream_pid = resources.supervised(envoys.supervisor)["upstream"]
    saturated = run_gateway(
        gateway, load=load, label="(f) gateway over TLS → upstream", upstream_pid=upstream_pid
    )
    announce(line(saturated.target))
    check_errors(saturated.target.label, saturated.target.result)
    gateway.stop()
    figures = TlsFigures(plain=b, plain_tls=plain_tls, gateway=e, gateway_tls=saturated)
    for text in figures.lines():
        announce(text)
    return figures


def run_targets(
    load: Load,
    *,
    envoys: BaselineEnvoys,
    gateways: tuple[Gateway, ...],
    over_tls: Gateway,
    envoy_concurrency: int,
) -> None:
    note = machine_note(load, envoy_concurrency=envoy_concurrency)
    announce(note)
    upstream_port = envoys.start_upstream()
    plain_port = envoys.start_plain(upstream_port=upstream_port)
    a_url = f"http://127.0.0.1:{upstream_port}{CHAT}"
    b_url = f"http://127.0.0.1:{plain_port}{CHAT}"
    announce("(a) loading the fixed-response upstream directly...")
    a = run_baseline("(a) upstream (fixed-response Envoy)", a_url, load=load)
    announce("(b) loading a plain Envoy (router only) in front of it...")
    b = run_baseline("(b) plain Envoy (router only) → upstream", b_url, load=load)
    upstream_pid = resources.supervised(envoys.supervisor)["upstream"]
    figures = []
    for name, gateway in zip("cde", gateways, strict=False):
        settings = gateway.stack.settings
        where = f"{settings.ratelimit_at}, ext_authz over {settings.extauthz_protocol}"
        label = f"({name}) gateway, limits decided in {where} → upstream"
        announce(f"({name}) starting the whole system, RATELIMIT_AT={where}...")
        gateway.start(upstream_port=upstream_port)
        announce(f"({name}) loading it with an API key whose limits are never reached...")
        saturated = run_gateway(gateway, load=load, label=label, upstream_pid=upstream_pid)
        print_results(a, b, saturated)
        half = half_load(gateway, saturated_rps=saturated.target.result.rps, load=load)
        for text in half.lines(name):
            announce(text)
        duration_s = max(2, load.duration_s // 2)
        announce(
            f"({name}) unloaded latency: 1 connection, sequential requests, {duration_s} s each"
        )
        unloaded = unloaded_latency(
            (a_url, b_url, gateway.url),
            label=f"({name}) gateway, RATELIMIT_AT={where}",
            authorization=f"Bearer {gateway.api_key}",
            duration_s=duration_s,
        )
        announce(f"({name}) unloaded: {unloaded.targets_text()}")
        figures.append(GatewayFigures(name, saturated, half, unloaded))
        gateway.stop()  # one system at a time: they share two cores
    tls = run_tls_pair(
        load, envoys=envoys, gateway=over_tls, b=b, e=figures[-1].run if figures else None
    )
    announce("measuring the key cache's memory (a million keys, in a process of its own)...")
    key_cache = measure_apart()
    announce(key_cache.line())
    announce("\n" + markdown(a, b, figures, key_cache=key_cache, note=note))
    announce("\n" + tls.markdown())
    announce("\nxDS (the rest, with the apply time: python -m bench.xds)")
    build_figures(nodes=1000, models=50)
    announce("\nscale-out (python -m bench.scale)")
    scale_figures(load, envoy_concurrency=1)  # three Envoys on this box's cores
