"""Latency with one connection and one request at a time: what each hop adds when nothing
queues (the throughput runs measure saturation, where queueing dominates)."""

from __future__ import annotations

from dataclasses import dataclass

from bench import targets
from bench.wrk import Load, WrkResult, measure


@dataclass(frozen=True)
class Unloaded:
    """The upstream, plain Envoy and one gateway, measured one after the other."""

    upstream: WrkResult
    plain: WrkResult
    gateway: WrkResult
    gateway_label: str

    def added(self) -> tuple[float, float]:
        """p50 and p99 the gateway adds over plain Envoy, in ms."""
        return self.gateway.p50_ms - self.plain.p50_ms, self.gateway.p99_ms - self.plain.p99_ms

    def targets_text(self) -> str:
        p50, p99 = self.added()
        p50_ok, p99_ok = p50 <= targets.P50_ADDED_MS, p99 <= targets.P99_ADDED_MS
        return (
            f"p50 added {p50:+.2f} ms (target <= {targets.P50_ADDED_MS:g} ms: "
            f"{targets.verdict(p50_ok)}), p99 added {p99:+.2f} ms "
            f"(target <= {targets.P99_ADDED_MS:g} ms: {targets.verdict(p99_ok)})"
        )

    def rows(self) -> list[str]:
        """Markdown rows: | target | p50 | p99 | p50 added | p99 added |, each over the row
        above it (the gateway's: over plain Envoy)."""
        out = []
        previous: WrkResult | None = None
        for label, r in (
            ("(a) upstream", self.upstream),
            ("(b) plain Envoy", self.plain),
            (self.gateway_label, self.gateway),
        ):
            if previous is None:
                added = "— | —"
            else:
                added = (
                    f"{r.p50_ms - previous.p50_ms:+.2f} ms | {r.p99_ms - previous.p99_ms:+.2f} ms"
                )
            out.append(f"| {label} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | {added} |")
            previous = r
        return out


HEADER = [
    f"| unloaded, 1 connection | p50 | p99 | p50 added (target <= {targets.P50_ADDED_MS:g} ms) "
    f"| p99 added (target <= {targets.P99_ADDED_MS:g} ms) |",
    "| --- | ---: | ---: | ---: | ---: |",
]


def unloaded_latency(
    urls: tuple[str, str, str], *, label: str, authorization: str, duration_s: int
) -> Unloaded:
    """``urls``: the upstream's, plain Envoy's and the gateway's."""
    single = Load(connections=1, threads=1, duration_s=duration_s, warmup_s=1)
    upstream, plain, gateway = (
        measure(url, load=single, authorization=authorization) for url in urls
    )
    return Unloaded(upstream, plain, gateway, label)
