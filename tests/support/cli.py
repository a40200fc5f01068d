"""The operator command line run in-process (the ``cli`` fixture), and its JSON output."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Cli = Callable[..., tuple[int, str, str]]


def cli_ok(outcome: tuple[int, str, str]) -> Any:
    """The JSON a CLI command printed, after checking it succeeded."""
    code, out, err = outcome
    assert code == 0, err
    return json.loads(out)
