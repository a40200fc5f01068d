"""Starts and stops the child processes of a stack; nothing outlives it.

Children get their own log file each. Stopping sends SIGTERM in reverse start order, waits,
then SIGKILLs what is left, so Ctrl-C never leaves anything running or listening.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None  # None: output goes to the supervisor's own stdout


class ChildFailed(RuntimeError):
    pass


class Supervisor:
    def __init__(self, log_dir: Path | None) -> None:
        """``log_dir`` None: children write to our stdout (containers log that way)."""
        self.log_dir = log_dir
        self.children: list[Child] = []
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str]) -> Child:
        if self.log_dir is None:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
            log_path = None
        else:
            log_path = self.log_dir / f"{name}.log"
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
                )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def check(self) -> None:
        """Raise if a child exited on its own (a crashed service must not go unnoticed)."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                tail = (
                    ""
                    if child.log_path is None
                    else (
                        "; last log lines:\n" + child.log_path.read_text(errors="replace")[-2000:]
                    )
                )
                raise ChildFailed(f"{child.name} exited with {code}{tail}")

    def stop_child(self, child: Child, *, timeout: float = 5.0) -> None:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, timeout)
                child.proc.kill()
                child.proc.wait()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self, *, timeout: float = 5.0) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(list(self.children)):
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                child.proc.kill()
                child.proc.wait()
        self.children.clear()


def base_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
