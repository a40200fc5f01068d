"""The process logs a stack writes, read as what they are: one JSON object per line
(crosslogic.logs) for our processes, the servers' own formats for the rest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from crosslogic.stack import Stack

# processes whose logs are in their own format: Envoy's (envoy, envoy-2...), PostgreSQL's
# and Redis'
FOREIGN = re.compile(r"(envoy(-.+)?|postgres|redis)\.log")
# a simulated node announces where it listens on stdout, as vLLM does: a line for its
# operator (and tests) to read, not a log line
NODE_ANNOUNCEMENT = re.compile(r"node \S+ serving \S+ on http://\S+")
FIELDS = ("time", "level", "service", "pid", "logger", "message")


def log_files(stack: Stack) -> list[Path]:
    """Every log file of ``stack``'s processes, and every gateway's access log."""
    found = sorted((stack.data_dir / "logs").glob("*.log"))
    return found + [gateway.settings.access_log for gateway in stack.gateways]


def ours(path: Path) -> bool:
    return path.parent.name == "logs" and FOREIGN.fullmatch(path.name) is None


def complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` written so far (not one being written now)."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]  # after the last newline: unfinished


def records(path: Path) -> list[dict[str, Any]]:
    """The log records of one of our processes' log files (the node's announcement aside)."""
    return [
        json.loads(line) for line in complete_lines(path) if not NODE_ANNOUNCEMENT.fullmatch(line)
    ]
