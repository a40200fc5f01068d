"""The fault matrix (`make chaos`): SIGKILL each process in turn under a mixed load.

One stack of its own. Clients keep sending JSON chat requests, full streams and streams they
abandon halfway, through Envoy with the openai SDK, while each process of the system is
killed in turn. For each fault the table records what clients saw, how long until the system
was whole again (the process back, and a request through Envoy answered), and, once billing
has caught up, every request id a client saw answered is looked up: exactly one usage row
each, with the tokens the node reported. The table is printed and written to
``$CHAOS_REPORT`` (default: the stack's data directory).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2  # the transport of the openai SDK installed here
import openai
import pytest

from crosslogic.probes import http_ok
from crosslogic.settings import to_env
from crosslogic.shapes import SHAPES
from crosslogic.stack import Stack
from crosslogic.supervisor import Child
from tests.support.db import run_db
from tests.support.metrics import metric
from tests.support.system import MODEL, own_system
from tests.support.tenants import demo_key
from tests.support.waiting import wait_until

LOAD_CLIENTS = 3
BEFORE_KILL_S = 1.0
AFTER_RECOVERY_S = 1.5
RECOVERY_LIMIT_S = 30.0


@dataclass
class Outcome:
    kind: str  # json | stream | abandoned
    request_id: str | None
    error: str | None = None  # what the client saw go wrong, None: answered in full
    usage: tuple[int, int] | None = None  # (prompt, completion) as the node reported it


@dataclass
class Phase:
    fault: Fault
    outcomes: list[Outcome] = field(default_factory=list)
    recovery_s: float = 0.0


class Load:
    """A few clients sending a bounded, mixed load until told to stop."""

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(LOAD_CLIENTS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            kind = ("json", "json", "stream", "abandoned")[n % 4]
            n += 1
            outcome = self._one(kind, words=1 + n % 7)
            with self._lock:
                self.outcomes.append(outcome)
            if outcome.error is not None and outcome.request_id is None:
                time.sleep(0.05)  # nothing answered: back off a little, as SDKs do

    def _one(self, kind: str, *, words: int) -> Outcome:
        messages = [{"role": "user", "content": " ".join(["word"] * words)}]
        request_id = None
        try:
            if kind == "json":
                raw = self._client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=messages, max_tokens=5
                )
                request_id = raw.headers.get("x-request-id")
                reply = raw.parse()
                assert reply.usage is not None
                return Outcome(
                    kind,
                    request_id,
                    usage=(reply.usage.prompt_tokens, reply.usage.completion_tokens),
                )
            with self._client.chat.completions.with_streaming_response.create(
                model=MODEL,
                messages=messages,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            ) as response:
                request_id = response.headers.get("x-request-id")
                usage = None
                for n, line in enumerate(response.iter_lines()):
                    if kind == "abandoned" and n >= 4:
                        return Outcome(kind, request_id)  # leaves mid-stream
                    if line.startswith("data: {"):
                        chunk = json.loads(line[len("data: ") :])
                        if chunk.get("usage"):
                            usage = (
                                chunk["usage"]["prompt_tokens"],
                                chunk["usage"]["completion_tokens"],
                            )
                if usage is None:
                    return Outcome(kind, request_id, error="stream ended without usage")
                return Outcome(kind, request_id, usage=usage)
        except openai.APIStatusError as exc:
            return Outcome(kind, request_id, error=f"HTTP {exc.status_code} {exc.code}")
        except (openai.APIError, httpx2.HTTPError, OSError) as exc:  # connection lost
            return Outcome(kind, request_id, error=type(exc).__name__)


# the default shape (ext_authz over HTTP deciding limits too) and the rate-limit service's
# (crosslogic/shapes.py): each faults the processes it runs
@pytest.fixture(scope="module", params=["http", "service"])
def chaos_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with own_system(nodes=0, **SHAPES[request.param]) as stack:
        for i in (1, 2):  # slow enough that streams are in flight when something dies
            stack.start_node(f"chaos-{i}", extra=("--tokens-per-second", "60"))
        stack.wait_healthy_nodes(2)
        yield stack


FAIL_OPEN = 'crosslogic_ratelimit_decisions_total{result="fail_open"}'


def child_named(stack: Stack, name: str) -> Child:
    return next(c for c in stack.supervisor.children if c.name == name)


def probe(client: openai.OpenAI) -> bool:
    try:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "probe"}], max_tokens=1
        )
        return True
    except (openai.APIError, OSError):
        return False


def kill_and_time_recovery(stack: Stack, client: openai.OpenAI, name: str) -> float:
    """SIGKILL one child; seconds until it runs again and a request passes Envoy."""
    child = child_named(stack, name)
    restarts = child.restarts
    started = time.monotonic()
    child.proc.kill()
    wait_until(
        f"the system to be whole after killing {name}",
        lambda: (
            child.restarts > restarts
            and child.proc.poll() is None
            and http_ok(f"{stack.admin_url}/ready")
            and probe(client)
        ),
        timeout=RECOVERY_LIMIT_S,
        check=stack.supervisor.check,
    )
    return time.monotonic() - started


@dataclass(frozen=True)
class Fault:
    label: str
    child: str  # the supervisor's name of the process killed
    # what clients may see go wrong while it is down (README: the fault matrix)
    allowed_errors: frozenset[str] = frozenset()


CUT = frozenset({"APIConnectionError", "RemoteProtocolError", "stream ended without usage"})
FAULTS = [
    Fault("billing", "billing-1"),
    Fault("one ext_authz worker (of 2)", "extauthz-1"),
    Fault("one rate-limit worker (of 2)", "ratelimit-1"),
    Fault("xds", "xds-1"),
    Fault("admin API", "admin-1"),
    # requests on that node when it dies: sent to the other node if no response began
    # (no error), a cut stream after
    Fault("a node, mid-stream", "node-chaos-1", CUT),
    # requests in flight fail, new connections are refused until it is back
    Fault("Envoy", "envoy", CUT),
    Fault("Redis", "redis"),
    Fault("PostgreSQL", "postgres"),
]


def wait_for_usage(
    stack: Stack, request_ids: set[str], *, timeout: float = 60.0
) -> dict[str, list]:
    """Rows per request id once billing has caught up (every id has a row, or time is up)."""

    def rows() -> dict[str, list]:
        found: dict[str, list] = collections.defaultdict(list)
        for row in run_db(
            stack,
            "SELECT request_id, prompt_tokens, completion_tokens, usage_estimated, source "
            "FROM usage_records WHERE request_id = ANY($1::text[])",
            list(request_ids),
        ):
            found[row["request_id"]].append(row)
        return found

    with contextlib.suppress(TimeoutError):  # what is missing then is counted as lost
        wait_until("billing to catch up", lambda: set(rows()) >= request_ids, timeout=timeout)
    return rows()


def test_every_single_fault_heals_and_loses_no_usage(chaos_stack: Stack) -> None:
    stack = chaos_stack
    key = demo_key(stack, rate_limit_rpm=1_000_000)
    client = openai.OpenAI(
        base_url=stack.base_url, api_key=key.plaintext, max_retries=0, timeout=15
    )
    phases = []
    running = {child.name for child in stack.supervisor.children}
    for fault in [f for f in FAULTS if f.child in running]:
        phase = Phase(fault)
        with Load(client) as load:
            # durations of load, on purpose: requests are in flight when the process dies,
            # and the healed system carries load for a while before the next fault
            time.sleep(BEFORE_KILL_S)
            phase.recovery_s = kill_and_time_recovery(stack, client, fault.child)
            time.sleep(AFTER_RECOVERY_S)
        phase.outcomes = load.outcomes
        phases.append(phase)

    # every limit is decided in Redis again, none by a process's local fallback
    before = metric(stack, FAIL_OPEN)
    assert all(probe(client) for _ in range(5))
    assert metric(stack, FAIL_OPEN) == before
    # gauges count the living: one Envoy holds one ADS stream, the dead xDS process's is gone
    assert metric(stack, "crosslogic_xds_streams") == 1

    # revocation still reaches every ext_authz process at once (their LISTEN came back)
    revoke = subprocess.run(
        [sys.executable, "-m", "crosslogic", "keys", "revoke", key.key_id],
        env={**os.environ, **to_env(stack.settings)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert revoke.returncode == 0, revoke.stderr
    # within 10 s: the key cache alone would keep it for a minute
    wait_until("the revoked key to be refused", lambda: not probe(client), timeout=10)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    answered = {
        o.request_id: o for p in phases for o in p.outcomes if o.request_id and o.error is None
    }
    rows = wait_for_usage(stack, set(answered))
    lines = [
        "| fault | requests | client errors | recovery | usage lost | usage duplicated "
        "| tokens wrong | billed from the journal |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    total_lost = total_duplicated = total_wrong = 0
    unexpected = []
    for phase in phases:
        errors = collections.Counter(o.error for o in phase.outcomes if o.error)
        seen = [o for o in phase.outcomes if o.request_id in answered and o.error is None]
        lost = sum(1 for o in seen if not rows.get(o.request_id or ""))
        duplicated = sum(1 for o in seen if len(rows.get(o.request_id or "", [])) > 1)
        wrong = sum(
            1
            for o in seen
            if o.usage is not None
            and rows.get(o.request_id or "")
            and not rows[o.request_id or ""][0]["usage_estimated"]
            and (
                rows[o.request_id or ""][0]["prompt_tokens"],
                rows[o.request_id or ""][0]["completion_tokens"],
            )
            != o.usage
        )
        journaled = sum(
            1
            for o in seen
            if any(r["source"] == "journal" for r in rows.get(o.request_id or "", []))
        )
        total_lost += lost
        total_duplicated += duplicated
        total_wrong += wrong
        unexpected += [
            f"{phase.fault.label}: {e}" for e in errors if e not in phase.fault.allowed_errors
        ]
        shown = ", ".join(f"{n} {e}" for e, n in errors.most_common()) or "none"
        lines.append(
            f"| {phase.fault.label} | {len(phase.outcomes)} | {shown} | {phase.recovery_s:.1f} s "
            f"| {lost} | {duplicated} | {wrong} | {journaled} |"
        )
    table = "\n".join(lines)
    report = Path(os.environ.get("CHAOS_REPORT", str(stack.data_dir / "chaos.md")))
    report.write_text(table + "\n")
    print("\n" + table)
    assert (total_lost, total_duplicated, total_wrong) == (0, 0, 0), table
    assert not unexpected, table
