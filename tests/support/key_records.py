"""KeyRecord values for the pure ext_authz tests."""

from __future__ import annotations

from crosslogic.extauthz.decision import KeyRecord


def key_record(**changes: object) -> KeyRecord:
    """A KeyRecord for the pure tests: active everything, changed as asked."""
    base: dict[str, object] = dict(
        api_key_id="a",
        key_id="k",
        tenant_id="t",
        environment_id="e",
        key_status="active",
        tenant_status="active",
        environment_status="active",
        expires_at=None,
        allowed_models=None,
        rate_limit_rpm=None,
    )
    base.update(changes)
    return KeyRecord(**base)  # type: ignore[arg-type]
