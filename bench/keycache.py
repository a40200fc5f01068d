"""``python -m bench.keycache [--keys N]``: the memory ext_authz's KeyCache takes per million
cached keys (default: filled with a million).

Measured in a process of its own as the growth of its resident memory while the cache fills
through ``KeyCache.get``, so the allocator's overhead counts and nothing else's heap does
(tracemalloc would count only Python's own allocations, and its traces would double the
process). Each record is made as the database adapter makes one: fresh strings per row (UUIDs
as text, a 12-character key id, statuses and plan), a 32-byte SHA-256 key hash; one key in ten
expires, one in five has its own requests-per-minute limit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from crosslogic.extauthz.decision import KeyRecord
from crosslogic.extauthz.store import KeyCache, key_record

ROOT = Path(__file__).resolve().parent.parent
EXPIRY = datetime(2027, 1, 1, tzinfo=UTC)


def fresh(text: str) -> str:
    """A new str object, as every row asyncpg decodes gives (literals would be shared)."""
    return "".join(list(text))


def record(n: int) -> KeyRecord:
    """Key n's record, from a row as asyncpg gives it, through the database adapter's own
    conversion (store.key_record)."""
    tenant = n // 20  # twenty keys per tenant, ten per environment
    return key_record(
        {
            "api_key_id": str(uuid.UUID(int=n)),
            "key_id": f"{n:012x}",
            "tenant_id": str(uuid.UUID(int=tenant + 2**64)),
            "environment_id": str(uuid.UUID(int=n // 10 + 2**65)),
            "key_status": fresh("active"),
            "tenant_status": fresh("active"),
            "environment_status": fresh("active"),
            "expires_at": EXPIRY + timedelta(seconds=n) if n % 10 == 0 else None,
            "allowed_models": None,
            "rate_limit_rpm": 600 if n % 5 == 0 else None,
            "plan": fresh("default"),
            "quota_reason": None,
            "allowed_regions": None,
            "default_region": None,
        }
    )


async def fill(keys: int) -> KeyCache:
    current = 0

    async def fetch(key_hash: bytes) -> KeyRecord | None:
        return record(current)

    cache = KeyCache(fetch, ttl=3600.0)
    for n in range(keys):
        current = n
        await cache.get(hashlib.sha256(n.to_bytes(8, "big")).digest())
    return cache


@dataclass(frozen=True)
class KeyCacheMemory:
    keys: int
    grown_bytes: int

    @property
    def mb_per_million(self) -> float:
        return self.grown_bytes / max(1, self.keys) * 1e6 / 2**20

    def line(self) -> str:
        return (
            f"ext_authz key cache: {self.mb_per_million:,.0f} MB per million cached keys "
            f"(RSS growth of a process filling a KeyCache with {self.keys:,} KeyRecords)"
        )


def measure(keys: int) -> KeyCacheMemory:
    gc.collect()
    before = psutil.Process().memory_info().rss
    cache = asyncio.run(fill(keys))
    gc.collect()
    grown = psutil.Process().memory_info().rss - before
    assert cache.cached(hashlib.sha256((keys - 1).to_bytes(8, "big")).digest()) is not None
    return KeyCacheMemory(keys=keys, grown_bytes=grown)


def measure_apart(keys: int = 1_000_000) -> KeyCacheMemory:
    """:func:`measure` in a fresh interpreter: the benchmark's heap stays out of it."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.keycache", "--keys", str(keys), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    return KeyCacheMemory(keys=int(raw["keys"]), grown_bytes=int(raw["grown_bytes"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.keycache", description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="one JSON line, for bench.run")
    args = parser.parse_args(argv)
    result = measure(args.keys)
    if args.json:
        print(json.dumps({"keys": result.keys, "grown_bytes": result.grown_bytes}))
    else:
        print(result.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
