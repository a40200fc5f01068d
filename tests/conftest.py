"""Session fixtures: one real stack (Postgres, Redis, services, Envoy, two nodes) on free ports.

DB_HOST / REDIS_HOST in the environment make the stack use those servers instead of the
embedded ones, as in production. Fixtures only: the helpers tests share are in
``tests/support``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from crosslogic.cli import main
from crosslogic.settings import to_env
from crosslogic.shapes import SHAPES
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.cli import Cli
from tests.support.system import log_tails, own_system


@pytest.fixture(scope="session")
def session_stack() -> Iterator[Stack]:
    """The session's system, in the default shape: ext_authz over HTTP decides auth and
    every rate-limit layer in one call."""
    with own_system(nodes=2) as running:
        yield running


@pytest.fixture(scope="session")
def stack(session_stack: Stack) -> Stack:
    """The session's system. A module may run its tests over both protocols instead
    (tests/support/protocols.py); the fixtures below never follow that."""
    return session_stack


@pytest.fixture(scope="session")
def http_stack(session_stack: Stack) -> Stack:
    """ext_authz over HTTP deciding the rate limits: the default shape, the session's."""
    return session_stack


@pytest.fixture(scope="session")
def grpc_stack() -> Iterator[Stack]:
    """The other supported shape, for the whole session: Envoy asks ext_authz over gRPC and
    its rate-limit filter asks the rate-limit service (RATELIMIT_AT=service), shared by every
    module that runs its tests over both protocols (tests/support/protocols.py)."""
    with own_system(nodes=2, **SHAPES["service"]) as running:
        yield running


@pytest.fixture(scope="module")
def authz_stack() -> Iterator[Stack]:
    """ext_authz over gRPC making the rate-limit decisions (RATELIMIT_AT=authz)."""
    with own_system(nodes=1, **SHAPES["authz"]) as running:
        yield running


@pytest.fixture(scope="module")
def http_service_stack() -> Iterator[Stack]:
    """ext_authz over HTTP, Envoy's rate-limit filter asking the rate-limit service."""
    with own_system(nodes=1, **SHAPES["http-service"]) as running:
        yield running


@pytest.fixture(params=["service", "authz", "http", "http-service"])
def limited(request: pytest.FixtureRequest) -> Stack:
    """The test runs in every supported shape: the rate-limit decision in the rate-limit
    service (ext_authz over gRPC), in ext_authz over gRPC, in ext_authz over HTTP (the
    default), and in the rate-limit service with ext_authz over HTTP."""
    name = {
        "service": "grpc_stack",
        "authz": "authz_stack",
        "http": "session_stack",
        "http-service": "http_service_stack",
    }
    chosen: Stack = request.getfixturevalue(name[request.param])
    return chosen


@pytest.fixture()
def client(stack: Stack) -> openai.OpenAI:
    assert stack.demo is not None
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)


@pytest.fixture()
def admin(stack: Stack) -> Admin:
    return Admin(stack)


@pytest.fixture()
def environment(admin: Admin) -> dict[str, Any]:
    """A new tenant's environment, made through the admin API."""
    tenant = ok(admin("POST", "/admin/tenants", {"name": f"acme-{time.monotonic_ns()}"}))
    return dict(ok(admin("POST", f"/admin/tenants/{tenant['id']}/environments", {"name": "prod"})))


@pytest.fixture()
def cli(stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    for name, value in to_env(stack.settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the end of every process log of the systems it used: CI keeps
    nothing else once the temporary data directories are gone."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Stack):
            report.sections.append((f"process logs of {value.data_dir}", log_tails(value)))
