"""The demo setup `crosslogic up` (and `crosslogic demo`) creates, and the lines it prints.

The printed ``OPENAI_BASE_URL=`` / ``OPENAI_API_KEY=`` / ``MODEL=`` lines are a fixed
interface: operators' scripts parse them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from crosslogic.extauthz import provisioning

DEMO_MODEL = "demo-llama"


@dataclass(frozen=True)
class Demo:
    model: str
    api_key: str
    tenant_id: str
    environment_id: str
    api_key_id: str


async def seed(conn: asyncpg.Connection, *, model: str = DEMO_MODEL) -> Demo:
    """The demo model, tenant and environment (kept across runs) and a new key (shown once)."""
    await provisioning.ensure_model(
        conn, model, input_price=Decimal("0.20"), output_price=Decimal("0.60")
    )
    tenant_id = await provisioning.ensure_tenant(conn, "demo")
    environment_id = await provisioning.ensure_environment(conn, tenant_id, "dev")
    key = await provisioning.create_key(
        conn, tenant_id=tenant_id, environment_id=environment_id, name="demo"
    )
    return Demo(
        model=model,
        api_key=key.plaintext,
        tenant_id=tenant_id,
        environment_id=environment_id,
        api_key_id=key.api_key_id,
    )


def client_lines(base_url: str, demo: Demo) -> list[str]:
    body = json.dumps({"model": demo.model, "messages": [{"role": "user", "content": "Hello"}]})
    return [
        f"OPENAI_BASE_URL={base_url}",
        f"OPENAI_API_KEY={demo.api_key}",
        f"MODEL={demo.model}",
        f"curl -s {base_url}/chat/completions -H 'Authorization: Bearer {demo.api_key}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
    ]
