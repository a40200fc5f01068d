"""A batch of access-log lines, pure: the rows to insert, and, once the insert says which
request ids it wrote, what to count, settle and forget.

A request is billed once however often its line appears: in two batches (a replay after a
crash before the offset committed, ``ON CONFLICT DO NOTHING`` inserts nothing) or twice in
one batch (its row is inserted once, and only its first line is counted and settled).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass, field

from crosslogic.billing.accesslog import (
    MalformedEntry,
    Outcome,
    Settlement,
    UsageRecord,
    parse_line,
)


@dataclass
class Batch:
    """``seen``: the request ids of each Envoy boot's lines (their journal entries are
    redundant once consumed); ``replaced``: boots whose lines were followed by another's;
    ``malformed``: why each unreadable line was skipped."""

    records: list[UsageRecord] = field(default_factory=list)
    settlements: list[Settlement] = field(default_factory=list)
    seen: dict[str, list[str]] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)
    last_boot: str | None = None
    malformed: list[MalformedEntry] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)  # every line's, for the metrics

    def inserted(self, ids: Set[str]) -> list[UsageRecord]:
        """The records whose rows the insert wrote (``ids``), each request's first line."""
        left = set(ids)
        fresh = []
        for record in self.records:
            if record.request_id in left:
                left.discard(record.request_id)
                fresh.append(record)
        return fresh

    def due(self, ids: Set[str]) -> list[Settlement]:
        """The settlements to apply once the rows ``ids`` are committed: a billable request's
        only if its row was written now (a replay settles nothing twice), one per request."""
        billable = {r.request_id for r in self.records}
        done: set[str] = set()
        out = []
        for item in self.settlements:
            rid = item.request_id
            if rid not in done and (rid in ids or rid not in billable):
                done.add(rid)
                out.append(item)
        return out


def read(lines: Iterable[bytes], *, last_boot: str | None) -> Batch:
    """Parse ``lines``; ``last_boot``: the boot of the line before them, if known."""
    batch = Batch(last_boot=last_boot)
    for raw in lines:
        try:
            line = parse_line(raw)
        except MalformedEntry as exc:
            batch.malformed.append(exc)
            continue
        if line.outcome is not None:
            batch.outcomes.append(line.outcome)
        if line.record is not None:
            batch.records.append(line.record)
        if line.settlement is not None:
            batch.settlements.append(line.settlement)
        if line.boot is not None:
            batch.seen.setdefault(line.boot, []).append(line.request_id)
            if batch.last_boot is not None and batch.last_boot != line.boot:
                batch.replaced.append(batch.last_boot)
            batch.last_boot = line.boot
    return batch
