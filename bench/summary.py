"""The README-ready markdown summary of one benchmark run: every target, then per gateway its
latency inside the services, CPU per request, memory, and the key cache's size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench import targets
from bench.costs import CpuUsage, label, megabytes, order
from bench.keycache import KeyCacheMemory
from bench.report import GatewayRun, Target, percent
from bench.services import HalfLoad
from bench.unloaded import HEADER, Unloaded


@dataclass(frozen=True)
class GatewayFigures:
    """Everything measured of one gateway: saturated, at half of that, and unloaded."""

    name: str  # "c", "d"
    run: GatewayRun
    half: HalfLoad
    unloaded: Unloaded


def throughput(a: Target, b: Target, figures: list[GatewayFigures]) -> list[str]:
    rows = [
        f"| target | req/s | p50 | p99 | req/s vs (a) | req/s vs (b) "
        f"(target >= {targets.THROUGHPUT_VS_PLAIN:.0%}) | p50 vs (b) | p99 vs (b) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in [a, b, *(f.run.target for f in figures)]:
        r, rb = t.result, b.result
        versus = "— | — | —" if t is a else "100% | — | —"
        if t not in (a, b):
            versus = (
                f"{percent(r.rps, rb.rps)} | {r.p50_ms - rb.p50_ms:+.2f} ms | "
                f"{r.p99_ms - rb.p99_ms:+.2f} ms"
            )
        rows.append(
            f"| {t.label} | {r.rps:,.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
            f"{percent(r.rps, a.result.rps)} | {versus} |"
        )
    return rows


def unloaded(figures: list[GatewayFigures]) -> list[str]:
    rows = list(HEADER)
    for n, f in enumerate(figures):
        rows += f.unloaded.rows()[(0 if n == 0 else 2) :]
    return [
        *rows,
        "",
        "Each gateway's figures added are over the plain Envoy measured just before it.",
    ]


def inside(figures: list[GatewayFigures]) -> list[str]:
    rows = [
        "| inside the gateway (Prometheus histograms) | load | p50 | p99 | samples |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for f in figures:
        saturated = f"saturation, {f.run.target.result.rps:,.0f} req/s"
        half = f"half, {f.half.offered_rps:,.0f} req/s offered ({f.half.result.rps:,.0f} done)"
        for s in f.run.services:
            rows.append(
                f"| ({f.name}) {s.label} | {saturated} | {s.cell(0.5)} | {s.cell(0.99)} | "
                f"{s.histogram.count:,.0f} |"
            )
        for s in f.half.services:
            rows.append(
                f"| ({f.name}) {s.label} | {half} | {s.cell(0.5)} | {s.budget()} | "
                f"{s.histogram.count:,.0f} |"
            )
    return rows


def per_gateway(
    title: str, figures: list[GatewayFigures], names: list[str], cell: Callable[[str], str]
) -> list[str]:
    return [
        f"| {title} | {' | '.join(f'({f.name})' for f in figures)} |",
        f"| --- |{' ---: |' * len(figures)}",
        *(f"| {label(n)} | {cell(n)} |" for n in names),
    ]


def cpu(figures: list[GatewayFigures]) -> list[str]:
    usages = [f.run.cpu for f in figures]
    names = order(list(dict.fromkeys(n for u in usages for n in u.system)))

    def cells(value: Callable[[CpuUsage], str]) -> str:
        return " | ".join(value(u) for u in usages)

    rows = per_gateway(
        "CPU per request (user + system, µs)",
        figures,
        names,
        lambda n: cells(lambda u: f"{u.per_request_us(u.system[n]):.0f}" if n in u.system else "—"),
    )
    return [
        *rows,
        f"| **the system** | {cells(lambda u: f'**{u.system_us:.0f}**')} |",
        f"| cores for {targets.RATE:,} req/s (target <= {targets.CORES_FOR_10K:g}) | "
        f"{cells(lambda u: f'{u.cores_for_rate:.1f}')} |",
        f"| apart: wrk | {cells(lambda u: f'{u.per_request_us(u.load_generator):.0f}')} |",
        f"| apart: the upstream Envoy | {cells(lambda u: f'{u.per_request_us(u.upstream):.0f}')} |",
    ]


def memory(figures: list[GatewayFigures]) -> list[str]:
    names = order(list(dict.fromkeys(n for f in figures for n in f.run.memory)))
    return per_gateway(
        "resident memory after the run (RSS)",
        figures,
        names,
        lambda n: " | ".join(
            megabytes(f.run.memory[n]) if n in f.run.memory else "—" for f in figures
        ),
    )


def markdown(
    a: Target,
    b: Target,
    figures: list[GatewayFigures],
    *,
    key_cache: KeyCacheMemory,
    note: str,
) -> str:
    rows = [*throughput(a, b, figures), "", *unloaded(figures), "", *inside(figures)]
    rows += ["", *cpu(figures), "", *memory(figures), "", key_cache.line() + "."]
    for f in figures:
        rows += [
            "",
            f"({f.name}) Rate-limit calls that failed open during the measured run: "
            f"{f.run.ratelimit_failed_open:,}. Billing: {f.run.billing.summary()}.",
        ]
    return "\n".join([*rows, "", note])
