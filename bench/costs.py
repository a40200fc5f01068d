"""What one measured gateway run cost: CPU time per request of every process, and resident
memory after it."""

from __future__ import annotations

from dataclasses import dataclass

from bench import targets

_NAMES = {
    "envoy": "gateway Envoy",
    "redis": "Redis",
    "postgres": "PostgreSQL (postmaster + backends)",
}


# the request path first, then what works behind it, then the control plane
_ORDER = ("envoy", "extauthz", "ratelimit", "billing", "redis", "postgres", "admin", "xds")


def order(names: list[str]) -> list[str]:
    """Supervisor child names in reading order (``_ORDER`` by prefix, then by name)."""

    def rank(name: str) -> tuple[int, str]:
        first = next((i for i, p in enumerate(_ORDER) if name.startswith(p)), len(_ORDER))
        return first, name

    return sorted(names, key=rank)


def label(name: str) -> str:
    """A supervisor child's name as a reader knows it (``envoy-gw-2``: a second gateway)."""
    return _NAMES.get(name, name)


@dataclass(frozen=True)
class CpuUsage:
    """User + system seconds over one measured run: the system's processes by supervisor child
    name (billing, PostgreSQL and Redis until billing consumed the run, the others until wrk
    stopped), and apart the load generator and the upstream, which are not the system;
    ``requests``: what the run completed."""

    system: dict[str, float]
    load_generator: float
    upstream: float
    requests: int

    def per_request_us(self, seconds: float) -> float:
        return 1e6 * seconds / max(1, self.requests)

    @property
    def system_us(self) -> float:
        return self.per_request_us(sum(self.system.values()))

    @property
    def cores_for_rate(self) -> float:
        """Cores ``targets.RATE`` requests/s need at this CPU time per request."""
        return targets.RATE * self.system_us / 1e6

    def cores_line(self) -> str:
        ok = self.cores_for_rate <= targets.CORES_FOR_10K
        return (
            f"cores for {targets.RATE:,} req/s (the system, without wrk and the upstream): "
            f"{self.cores_for_rate:.1f} (target <= {targets.CORES_FOR_10K:.0f}: "
            f"{targets.verdict(ok)})"
        )

    def lines(self) -> list[str]:
        parts = ", ".join(
            f"{label(name)} {self.per_request_us(self.system[name]):.0f}"
            for name in order(list(self.system))
        )
        return [
            f"CPU per request (µs, user + system, {self.requests:,} requests): {parts}; "
            f"the system {self.system_us:.0f}; apart: wrk "
            f"{self.per_request_us(self.load_generator):.0f}, the upstream "
            f"{self.per_request_us(self.upstream):.0f}",
            self.cores_line(),
        ]


def megabytes(amount: int) -> str:
    return f"{amount / 2**20:.0f} MB"


def memory_line(rss: dict[str, int]) -> str:
    parts = ", ".join(f"{label(name)} {megabytes(rss[name])}" for name in order(list(rss)))
    return f"resident memory after the run (RSS): {parts}"
