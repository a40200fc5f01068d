"""The supervisor: crashed children come back with backoff; a crash loop is reported, once."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from crosslogic.supervisor import ChildFailed, RestartPolicy, Supervisor
from tests.support.waiting import wait_until


def test_backoff_doubles_up_to_its_ceiling_then_a_crash_loop_gives_up() -> None:
    policy = RestartPolicy(first_delay=0.1, max_delay=0.5, max_restarts=4, window=60)
    crashes: list[float] = []
    delays = []
    for t in (0.0, 1.0, 2.0, 3.0):
        crashes.append(t)
        delays.append(policy.delay(crashes, now=t))
    assert delays == [0.1, 0.2, 0.4, 0.5]
    crashes.append(4.0)
    assert policy.delay(crashes, now=4.0) is None  # the fifth crash within a minute


def test_crashes_spread_out_never_count_as_a_loop() -> None:
    policy = RestartPolicy(first_delay=0.1, max_delay=5, max_restarts=2, window=10)
    crashes: list[float] = []
    for t in range(0, 1000, 30):  # one crash every 30 s, forever
        crashes.append(float(t))
        assert policy.delay(crashes, now=float(t)) == 0.1


def test_a_killed_child_is_started_again(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, policy=RestartPolicy(first_delay=0.05))
    prepared: list[int] = []
    try:
        child = supervisor.spawn(
            "sleeper",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            env=dict(os.environ),
            prepare=lambda: prepared.append(1),
        )
        first = child.proc.pid
        os.kill(first, signal.SIGKILL)
        wait_until("a new sleeper", lambda: child.proc.pid != first and child.proc.poll() is None)
        assert child.restarts == 1
        assert len(prepared) == 2  # prepare runs before every start, the first included
        supervisor.check()  # one crash is no reason to give up
    finally:
        supervisor.stop_all()
    assert child.proc.poll() is not None


def test_a_crash_loop_names_the_child_its_exit_code_and_its_last_words(tmp_path: Path) -> None:
    supervisor = Supervisor(
        tmp_path, policy=RestartPolicy(first_delay=0.01, max_delay=0.01, max_restarts=3)
    )
    try:
        supervisor.spawn(
            "doomed",
            [sys.executable, "-c", "import sys; print('bad config: no such thing'); sys.exit(3)"],
            env=dict(os.environ),
        )
        wait_until("the crash loop to be reported", lambda: supervisor.failure is not None)
        with pytest.raises(ChildFailed) as failed:
            supervisor.check()
        message = str(failed.value)
        assert "doomed keeps crashing: 4 exits" in message
        assert "the last with 3" in message
        assert "bad config: no such thing" in message
        assert not supervisor.children  # no longer restarted
    finally:
        supervisor.stop_all()


def test_a_child_stopped_on_purpose_stays_stopped(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, policy=RestartPolicy(first_delay=0.01))
    try:
        child = supervisor.spawn(
            "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ)
        )
        supervisor.stop_child(child)
        # an absence has no event to wait on: several tending rounds, and nothing brought it back
        time.sleep(0.2)
        assert child.proc.poll() is not None
        assert child.restarts == 0
    finally:
        supervisor.stop_all()
