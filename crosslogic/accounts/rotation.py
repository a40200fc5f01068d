"""Key rotation rules, pure: whether a key may be rotated, and when its grace period ends.

A key is rotated at most once. Its successor gets the key's own expiry (the one the operator
set, never a grace end) and is the key rotated next, so a chain A -> B -> C keeps A's expiry
and a grace period once granted is never extended. Revoking a key in its grace period ends
it at once; its successor is a separate key and is not touched (nor is the old key revived
when the successor is revoked).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from crosslogic.errors import Conflict


def refusal(key: Mapping[str, Any], *, successor: str | None, now: datetime) -> Conflict | None:
    """Why ``key`` (a row of api_keys, times as datetimes) may not be rotated, or None.

    ``successor`` is the ``key_id`` of the key it was rotated to, if it was."""
    key_id = key["key_id"]
    if key["status"] != "active":
        return Conflict(f"Key '{key_id}' is revoked; create a new one.", code="api_key_revoked")
    if key["rotated_at"] is not None:
        # A second successor of one key would leave two live keys descending from it, and
        # the grace period the first rotation promised would have to be extended or broken.
        return Conflict(
            f"Key '{key_id}' was already rotated to '{successor}'; its grace period ends at "
            f"{key['grace_ends_at'].isoformat()}. Rotate '{successor}' instead, or revoke "
            f"'{key_id}' to end its grace period now.",
            code="api_key_already_rotated",
        )
    expires_at = key["expires_at"]
    if expires_at is not None and expires_at <= now:
        return Conflict(
            f"Key '{key_id}' expired at {expires_at.isoformat()}; create a new one.",
            code="api_key_expired",
        )
    return None


def grace_end(*, expires_at: datetime | None, now: datetime, grace_seconds: int) -> datetime:
    """When a key rotated at ``now`` stops working: after the grace period, or at its own
    expiry if that comes first (rotation never lengthens a key's life)."""
    end = now + timedelta(seconds=grace_seconds)
    return end if expires_at is None else min(end, expires_at)
