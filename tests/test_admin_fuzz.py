"""Schemathesis against the admin API's own OpenAPI document: no generated request gets a 5xx.

Generated requests create, suspend and limit things at random, so they run against a
system of their own (no nodes), never the session's shared one. Schemathesis' pytest plugin
does not load under pytest 9, so its command line runs it: seeded and bounded per operation.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crosslogic.stack import Stack
from tests.support.system import own_system


@pytest.fixture(scope="module")
def admin_stack() -> Iterator[Stack]:
    with own_system(nodes=0) as running:
        yield running


@pytest.mark.timeout(300)
def test_no_generated_request_gets_a_server_error(admin_stack: Stack, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{admin_stack.admin_url}/admin/openapi.json",
            "--url",
            admin_stack.admin_url,
            "--header",
            f"Authorization: Bearer {admin_stack.settings.admin_token}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--seed",
            "20261129",
            "--generation-deterministic",
            "--request-timeout",
            "10",
            "--continue-on-failure",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env={"NO_COLOR": "1", "PATH": str(Path(sys.executable).parent)},
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
