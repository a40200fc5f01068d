"""The demo setup `crosslogic up` (and `crosslogic demo`) creates, and the lines it prints.

The printed ``OPENAI_BASE_URL=`` / ``OPENAI_API_KEY=`` / ``MODEL=`` lines are a fixed
interface: operators' scripts parse them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg

from crosslogic import audit
from crosslogic.accounts import api_keys, environments, tenants
from crosslogic.accounts.requests import KeySpec

DEMO_MODEL = "demo-llama"


@dataclass(frozen=True)
class Demo:
    model: str
    api_key: str
    tenant_id: str
    environment_id: str
    api_key_id: str


async def _ensure_model(
    conn: asyncpg.Connection, name: str, *, input_price: Decimal, output_price: Decimal
) -> None:
    await conn.execute(
        """
        INSERT INTO models (name, input_price_per_mtok, output_price_per_mtok)
        VALUES ($1, $2, $3)
        ON CONFLICT (name) DO UPDATE SET status = 'active', updated_at = now()
        """,
        name,
        input_price,
        output_price,
    )


async def seed(conn: asyncpg.Connection, *, model: str = DEMO_MODEL) -> Demo:
    """The demo model, tenant and environment (kept across runs) and a new key (shown once),
    in one transaction; the accounts are created like an operator's, audited as ``system``."""
    async with conn.transaction():
        await _ensure_model(conn, model, input_price=Decimal("0.20"), output_price=Decimal("0.60"))
        tenant = await tenants.ensure(conn, actor=audit.SYSTEM, name="demo")
        environment = await environments.ensure(
            conn, actor=audit.SYSTEM, tenant_id=tenant["id"], name="dev"
        )
        key = await api_keys.create(
            conn, actor=audit.SYSTEM, environment_id=environment["id"], spec=KeySpec(name="demo")
        )
    return Demo(
        model=model,
        api_key=key["key"],
        tenant_id=tenant["id"],
        environment_id=environment["id"],
        api_key_id=key["api_key_id"],
    )


def client_lines(base_url: str, demo: Demo, *, ca_file: Path | None = None) -> list[str]:
    """The lines to paste; ``ca_file``: the CA that issued the listener's certificate, which
    a client must trust (``SSL_CERT_FILE=``, read by the OpenAI SDKs and most HTTP clients)."""
    body = json.dumps({"model": demo.model, "messages": [{"role": "user", "content": "Hello"}]})
    trust = [f"SSL_CERT_FILE={ca_file}"] if ca_file else []
    cacert = f"--cacert {ca_file} " if ca_file else ""
    return [
        f"OPENAI_BASE_URL={base_url}",
        f"OPENAI_API_KEY={demo.api_key}",
        f"MODEL={demo.model}",
        *trust,
        f"curl -s {cacert}{base_url}/chat/completions -H 'Authorization: Bearer {demo.api_key}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
    ]
