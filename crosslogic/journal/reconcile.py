"""When a dead Envoy's journal may be billed, and what it bills: pure.

A boot's journal holds the requests it admitted whose access-log lines billing has not yet
consumed. Once the boot is known dead (another Envoy process answers on its admin port) its
log can only have grown to the size billing saw at that moment; once the consumer's
committed offset is past it, every line that Envoy flushed has been consumed, and what is
left in the journal is usage it never wrote: billed at its estimate, flagged estimated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from crosslogic.billing.accesslog import UsageRecord
from crosslogic.billing.offsets import Offset
from crosslogic.contracts.journal import MalformedAdmission, decode


@dataclass(frozen=True)
class DeadBoot:
    """A superseded Envoy process and its log file as billing saw it when it learned that."""

    boot_id: str
    log_inode: int
    log_size: int


def ready(boot: DeadBoot, committed: Offset | None) -> bool:
    """True once every line the dead boot can have flushed has been consumed."""
    if boot.log_size == 0:
        return True
    if committed is None:
        return False
    if committed.inode != boot.log_inode:
        # the file was rotated since, which the operator does only once the consumer has
        # caught up (lag 0); the consumer then reads the new file from its start
        return True
    return committed.offset >= boot.log_size


def recovered(entries: Mapping[str, str | bytes]) -> tuple[list[UsageRecord], list[str]]:
    """Usage rows for journal entries (request id -> record), and the ids that were
    unreadable. Inserted with ON CONFLICT DO NOTHING: an entry whose line was consumed but
    whose removal failed is not billed twice."""
    rows: list[UsageRecord] = []
    bad: list[str] = []
    for request_id, value in entries.items():
        try:
            a = decode(value)
        except MalformedAdmission:
            bad.append(request_id)
            continue
        rows.append(
            UsageRecord(
                request_id=request_id,
                tenant_id=a.tenant_id,
                environment_id=a.environment_id,
                api_key_id=a.api_key_id,
                model_id=a.model_id,
                node_id=None,
                endpoint=a.endpoint,
                streamed=a.streamed,
                prompt_tokens=a.prompt_estimate,
                completion_tokens=a.completion_estimate,
                status_code=0,  # the outcome is unknown: the line that said was never written
                response_flags="-",
                usage_estimated=True,
                started_at=a.admitted_at,
                duration_ms=0,
                source="journal",
            )
        )
    return rows, bad
