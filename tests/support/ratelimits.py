"""Rate limits written straight into the stack's database, and announced."""

from __future__ import annotations

import time
from typing import Any

from crosslogic.stack import Stack
from tests.support.db import run_db


def set_limit(stack: Stack, scope: str, subject: str, **fields: Any) -> None:
    layer = "global" if scope == "global" else scope
    columns = ", ".join(fields)
    values = ", ".join(f"${i + 4}" for i in range(len(fields)))
    updates = ", ".join(f"{c} = excluded.{c}" for c in fields)
    run_db(
        stack,
        f"INSERT INTO rate_limits (scope, subject, layer, {columns}) VALUES ($1, $2, $3, {values}) "
        f"ON CONFLICT (scope, subject, layer) DO UPDATE SET {updates}",
        scope,
        subject,
        layer,
        *fields.values(),
    )
    notify_and_wait(stack)


def notify_and_wait(stack: Stack) -> None:
    run_db(stack, "SELECT pg_notify('crosslogic_limits', 'test')")
    # every rate-limit process reloads on the notification (milliseconds); nothing tells when
    # it has, and a probe request would spend the very quota the test then counts
    time.sleep(0.5)
