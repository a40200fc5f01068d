"""Reading the repository's Dockerfile: its instructions, the environment it sets and its
default command (what a compose service without ``command`` runs)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
APP_DIR = PurePosixPath("/app")  # where the Dockerfile copies the repository


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in dockerfile_instructions():
        if instruction == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def default_command() -> list[str]:
    cmd = [rest for instruction, rest in dockerfile_instructions() if instruction == "CMD"]
    assert cmd, "the Dockerfile has no CMD"
    parsed = json.loads(cmd[-1])
    assert isinstance(parsed, list)
    return [str(word) for word in parsed]
