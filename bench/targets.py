"""The seed's targets the benchmark prints its figures against."""

from __future__ import annotations

THROUGHPUT_VS_PLAIN = 0.30  # at least this share of plain Envoy's requests/s
P50_ADDED_MS = 1.0  # unloaded, over plain Envoy, at most
P99_ADDED_MS = 3.0
AUTHZ_P99_MS = 5.0  # the ext_authz check at half of saturation, under
RATELIMIT_P99_MS = 2.0  # the rate-limit decision at half of saturation, under
CORES_FOR_10K = 6.0  # cores 10,000 requests/s need, the system alone, at most
RATE = 10_000  # requests/s of that figure


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"
