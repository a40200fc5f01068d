"""CPU time and resident memory of the processes under test, read with psutil.

A process is counted with every process below it (PostgreSQL's backends are children of the
postmaster), and with the children each of them already reaped: a backend that exits during
the run leaves its time in its parent's ``children_user``/``children_system``, so a sample
taken before and one after count every CPU second once, whoever ran it.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterable, Mapping

import psutil

from crosslogic.supervisor import Supervisor


def _tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants; empty if it is gone."""
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system time of ``pid``, its descendants and the children they reaped; 0 if gone."""
    total = 0.0
    for process in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (shared pages count in each: an upper
    bound for PostgreSQL, whose backends share its buffers); 0 if gone."""
    total = 0
    for process in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def supervised(supervisor: Supervisor) -> dict[str, int]:
    """The pid of every child a supervisor runs now, by child name (``envoy``, ``extauthz-1``,
    ``postgres``...); read anew each time, since a restarted child has a new pid."""
    return {child.name: child.proc.pid for child in list(supervisor.children)}


def cpu_sample(pids: Mapping[str, int]) -> dict[str, float]:
    return {name: tree_cpu_seconds(pid) for name, pid in pids.items()}


def rss_sample(pids: Mapping[str, int]) -> dict[str, int]:
    return {name: tree_rss(pid) for name, pid in pids.items()}


def total_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(tree_cpu_seconds(pid) for pid in pids)


def reaped_cpu_seconds() -> float:
    """User + system time of this process' children that ended and were waited for: wrk's,
    sampled before and after a run of it (the benchmark reaps nothing else meanwhile)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def grown(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Per name, what ``after`` adds to ``before`` (a process started between them: all)."""
    return {name: value - before.get(name, 0.0) for name, value in after.items()}
