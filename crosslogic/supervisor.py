"""Starts, restarts and stops the child processes of a stack; nothing outlives it.

Children get their own log file each. A child that exits on its own is started again after a
backoff (logged, with its exit code), by a thread of the supervisor, so the system heals
whether or not anyone is watching; only a crash loop makes the supervisor give up, and then
``check()`` raises, naming the child and why. Stopping sends SIGTERM in reverse start order,
waits, then SIGKILLs what is left, so Ctrl-C never leaves anything running or listening.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crosslogic.metrics import mark_process_dead

log = logging.getLogger(__name__)


class ChildFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class RestartPolicy:
    """When to start a crashed child again: exponential backoff from ``first_delay`` up to
    ``max_delay``; more than ``max_restarts`` crashes within ``window`` seconds is a crash
    loop, and the supervisor gives up on that child (and so on the stack)."""

    first_delay: float = 0.1
    max_delay: float = 5.0
    max_restarts: int = 5
    window: float = 60.0

    def delay(self, crashes: list[float], *, now: float) -> float | None:
        """Seconds to wait before the next start, given the times of the child's crashes
        (the last one just now); None: give up."""
        recent = [t for t in crashes if now - t <= self.window]
        if len(recent) > self.max_restarts:
            return None
        return float(min(self.first_delay * 2 ** (len(recent) - 1), self.max_delay))


@dataclass
class Child:
    """One supervised process. ``proc`` is replaced on every restart."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path | None  # None: output goes to the supervisor's own stdout
    prepare: Callable[[], None] | None = None  # run before every (re)start
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None  # crashed: when to start it again
    restarts: int = 0


class Supervisor:
    def __init__(
        self,
        log_dir: Path | None,
        *,
        policy: RestartPolicy | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        """``log_dir`` None: children write to our stdout (containers log that way)."""
        self.log_dir = log_dir
        self.policy = policy or RestartPolicy()
        self.children: list[Child] = []
        self.failure: ChildFailed | None = None
        self._lock = threading.RLock()
        self._poll_interval = poll_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    # -- starting ------------------------------------------------------------------------
    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        prepare: Callable[[], None] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Child:
        """Start ``argv`` as child ``name`` and keep it running. ``prepare`` runs before every
        start (a fresh config for a restarted Envoy, say); ``user`` runs it as that user;
        ``stop_signal`` asks it to stop."""
        log_path = None if self.log_dir is None else self.log_dir / f"{name}.log"
        if prepare is not None:
            prepare()
        child = Child(
            name=name,
            argv=argv,
            env=env,
            proc=self._popen(argv, env=env, log_path=log_path, user=user),
            log_path=log_path,
            prepare=prepare,
            user=user,
            stop_signal=stop_signal,
        )
        with self._lock:
            self.children.append(child)
        self._ensure_thread()
        return child

    @staticmethod
    def _popen(
        argv: list[str], *, env: dict[str, str], log_path: Path | None, user: str | None
    ) -> subprocess.Popen[bytes]:
        if log_path is None:
            return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, user=user)
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                user=user,
            )

    # -- tending -------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._poll_interval):
            try:
                self.tend()
            except Exception:  # the thread must outlive any one bad restart
                log.exception("supervisor: tending children failed")

    def tend(self, *, now: float | None = None) -> None:
        """Notice children that exited and start them again when their backoff is over."""
        with self._lock:
            for child in list(self.children):
                now = time.monotonic() if now is None else now
                if child.restart_at is None:
                    code = child.proc.poll()
                    if code is None:
                        continue
                    mark_process_dead(child.proc.pid, env=child.env)
                    child.crashes.append(now)
                    delay = self.policy.delay(child.crashes, now=now)
                    if delay is None:
                        self._give_up(child, code)
                        continue
                    log.warning(
                        "%s exited with %s; restarting it in %.1fs (restart %d)",
                        child.name,
                        code,
                        delay,
                        child.restarts + 1,
                    )
                    child.restart_at = now + delay
                if child.restart_at is not None and now >= child.restart_at:
                    self._restart(child)

    def _restart(self, child: Child) -> None:
        child.restart_at = None
        child.restarts += 1
        try:
            if child.prepare is not None:
                child.prepare()
            child.proc = self._popen(
                child.argv, env=child.env, log_path=child.log_path, user=child.user
            )
        except Exception as exc:  # counts as a crash: the backoff and crash loop apply
            log.error("could not restart %s: %s", child.name, exc)
            child.crashes.append(time.monotonic())
            delay = self.policy.delay(child.crashes, now=time.monotonic())
            if delay is None:
                self._give_up(child, f"a failed start ({exc})")
            else:
                child.restart_at = time.monotonic() + delay
            return
        log.warning("%s restarted (pid %d)", child.name, child.proc.pid)

    def _give_up(self, child: Child, code: object) -> None:
        self.children.remove(child)
        message = (
            f"{child.name} keeps crashing: {len(child.crashes)} exits within "
            f"{self.policy.window:.0f}s, the last with {code}; giving up on it"
        )
        log.error("%s", message)
        if child.log_path is not None and child.log_path.exists():
            message += "; last log lines:\n" + child.log_path.read_text(errors="replace")[-2000:]
        if self.failure is None:
            self.failure = ChildFailed(message)

    def check(self) -> None:
        """Raise if the supervisor gave up on a child (a crash loop must not go unnoticed)."""
        if self.failure is not None:
            raise self.failure

    # -- stopping ------------------------------------------------------------------------
    def stop_child(self, child: Child, *, timeout: float = 5.0) -> None:
        """Stop one child for good (it is no longer restarted)."""
        with self._lock:
            if child in self.children:
                self.children.remove(child)
        _terminate([child], timeout=timeout)

    def stop_all(self, *, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            children, self.children = list(reversed(self.children)), []
        _terminate(children, timeout=timeout)


def _terminate(children: list[Child], *, timeout: float) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(child.stop_signal)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", child.name)
            child.proc.kill()
            child.proc.wait()
        mark_process_dead(child.proc.pid, env=child.env)


def base_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
