"""The admission journal's contract and the pure reconciliation decision."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crosslogic.billing.offsets import Offset
from crosslogic.contracts.journal import (
    Admission,
    MalformedAdmission,
    decode,
    encode,
    journal_key,
    valid_boot_id,
)
from crosslogic.envoy_config import fresh_config, render
from crosslogic.journal.reconcile import DeadBoot, ready, recovered
from crosslogic.settings import load

ADMISSION = Admission(
    tenant_id="5f0c7d3e-0000-4000-8000-000000000001",
    environment_id="5f0c7d3e-0000-4000-8000-000000000002",
    api_key_id="5f0c7d3e-0000-4000-8000-000000000003",
    model_id=7,
    endpoint="/v1/chat/completions",
    streamed=True,
    prompt_estimate=12,
    token_estimate=112,
    admitted_at=datetime(2026, 11, 29, 17, 0, 0, 123000, tzinfo=UTC),
)


def test_a_record_round_trips_and_refuses_what_it_cannot_read() -> None:
    assert decode(encode(ADMISSION)) == ADMISSION
    assert decode(encode(ADMISSION).encode()) == ADMISSION
    for bad in ("", "2|a|b", encode(ADMISSION).replace("|7|", "|x|")):
        with pytest.raises(MalformedAdmission):
            decode(bad)
    assert journal_key("00ff") == "crosslogic:admitted:00ff"


def test_every_envoy_process_gets_its_own_boot_id_in_its_config() -> None:
    settings = load({})
    first, second = fresh_config(settings), fresh_config(settings)
    assert first.boot_id != second.boot_id
    assert valid_boot_id(first.boot_id)
    # node metadata (for /server_info), ext_authz's call metadata and the access log
    assert first.text.count(first.boot_id) == 3
    with pytest.raises(ValueError, match="boot id"):
        render(settings, boot_id="../etc")


DEAD = DeadBoot("b1", log_inode=10, log_size=500)


@pytest.mark.parametrize(
    ("committed", "expected"),
    [
        (None, False),  # the consumer never committed: lines may be unread
        (Offset(10, 499), False),  # the dead boot's last lines are not consumed yet
        (Offset(10, 500), True),
        (Offset(10, 900), True),
        (Offset(11, 0), True),  # rotated since (only done once the consumer caught up)
    ],
)
def test_a_dead_boot_is_reconciled_once_its_log_is_consumed(
    committed: Offset | None, expected: bool
) -> None:
    assert ready(DEAD, committed) is expected


def test_an_empty_log_needs_no_consumer() -> None:
    assert ready(DeadBoot("b", log_inode=0, log_size=0), None)


def test_leftover_entries_become_estimated_rows_at_the_estimate() -> None:
    rows, bad = recovered({"r1": encode(ADMISSION).encode(), "r2": b"junk"})
    assert bad == ["r2"]
    (row,) = rows
    assert row.request_id == "r1" and row.source == "journal" and row.usage_estimated
    assert (row.prompt_tokens, row.completion_tokens) == (12, 100)
    assert row.started_at == ADMISSION.admitted_at and row.streamed
