"""`crosslogic up` (what `make up` runs): prints a working setup, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from crosslogic.ports import free_ports, port_in_use
from tests.support.system import logs_in
from tests.support.up import CROSSLOGIC, printed_lines, up_environment
from tests.support.waiting import wait_until


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # short: the embedded PostgreSQL's Unix socket lives below it (~107-byte path limit)
    path = Path(tempfile.mkdtemp(prefix="clu-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def crashed_children(pid: int) -> list[psutil.Process]:
    """The children of `up` that the test kills: a service, Envoy and both databases."""
    chosen = []
    for proc in psutil.Process(pid).children():
        line = " ".join(proc.cmdline())
        if proc.name() in ("envoy", "postgres", "redis-server") or "service billing" in line:
            chosen.append(proc)
    assert len(chosen) == 4, chosen
    return chosen


def wait_answered(
    client: openai.OpenAI, model: str, up: subprocess.Popen[str], data_dir: Path
) -> None:

    def answered() -> bool:
        assert up.poll() is None, logs_in(data_dir)
        try:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
            return True
        except openai.APIError:
            return False

    try:
        wait_until("an answer through Envoy", answered, timeout=30)
    except TimeoutError as exc:
        raise AssertionError(logs_in(data_dir)) from exc


def test_up_prints_working_lines_and_stops_everything_on_ctrl_c(data_dir: Path) -> None:
    ports, env = up_environment(data_dir)
    up = subprocess.Popen(
        [*CROSSLOGIC, "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert up.stdout is not None
        lines = printed_lines(up.stdout, ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MODEL"))
        assert set(lines) == {"OPENAI_BASE_URL", "OPENAI_API_KEY", "MODEL", "curl"}, logs_in(
            data_dir
        )
        family = psutil.Process(up.pid).children(recursive=True)
        curl = subprocess.run(
            lines["curl"], shell=True, capture_output=True, text=True, timeout=30, check=True
        )
        assert '"chat.completion"' in curl.stdout, logs_in(data_dir)
        client = openai.OpenAI(
            base_url=lines["OPENAI_BASE_URL"], api_key=lines["OPENAI_API_KEY"], max_retries=0
        )
        reply = client.chat.completions.create(
            model=lines["MODEL"], messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        # a crash of any one child is healed, not a reason to stop the stack
        for victim in crashed_children(up.pid):
            victim.kill()
        wait_answered(client, lines["MODEL"], up, data_dir)
        family = psutil.Process(up.pid).children(recursive=True)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
        said = up.stdout.read()
        for name in ("billing-1", "envoy", "postgres", "redis"):
            assert f"{name} exited with -9; restarting it" in said, said
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"left running: {alive}"
        assert not [p for p in ports.values() if port_in_use(p)]
    finally:
        if up.poll() is None:
            up.kill()


def test_sigterm_while_starting_leaves_nothing_behind(data_dir: Path) -> None:
    _, env = up_environment(data_dir)
    up = subprocess.Popen(
        [*CROSSLOGIC, "up"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            "it to start something (Postgres, Redis, services)",
            lambda: psutil.Process(up.pid).children(recursive=True),
            timeout=20,
        )
        time.sleep(0.5)  # on purpose: the signal lands while it is still starting the rest
        family = psutil.Process(up.pid).children(recursive=True)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"left running: {alive}"
        postmaster = data_dir / "pg" / "postmaster.pid"
        assert not postmaster.exists(), "the embedded PostgreSQL is still running"
    finally:
        if up.poll() is None:
            up.kill()


def test_one_port_for_two_services_is_refused_before_anything_starts(data_dir: Path) -> None:
    # gRPC servers would share it silently (SO_REUSEPORT): half the checks would go astray
    ports, env = up_environment(data_dir)
    env["RATELIMIT_PORT"] = env["EXTAUTHZ_PORT"]
    up = subprocess.run([*CROSSLOGIC, "up"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 2
    assert (
        "configuration error: one port for two services: "
        f"EXTAUTHZ_PORT = RATELIMIT_PORT = {ports['EXTAUTHZ_PORT']}"
    ) in up.stderr
    assert not (data_dir / "pg").exists()  # refused before Postgres was started


def test_serve_refuses_one_port_for_two_services_too() -> None:
    # `serve` runs every service of a container: the same silent sharing would happen there
    env = {**os.environ, "DB_HOST": "127.0.0.1", "REDIS_HOST": "127.0.0.1"}
    env["SERVER_PORT"], env["XDS_PORT"] = "47002", "47002"
    serve = subprocess.run(
        [*CROSSLOGIC, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert serve.returncode == 2
    assert "one port for two services: SERVER_PORT = XDS_PORT = 47002" in serve.stderr


def test_free_ports_are_different() -> None:
    for _ in range(200):
        assert len(set(free_ports(8))) == 8
