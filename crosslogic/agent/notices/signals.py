"""A signal as the interruption notice: Kubernetes' SIGTERM when the pod is deleted (the
kubelet sends it, then SIGKILL after terminationGracePeriodSeconds), or SIGUSR1, which an
operator or a test sends to stand for any cloud's notice."""

from __future__ import annotations

import asyncio
import signal

from crosslogic.agent.notices import Notice


class SignalWatcher:
    """Returns a notice when ``signum`` arrives. The handler, set when ``wait()`` starts,
    stays until the loop closes: a second signal must not kill the draining process."""

    def __init__(self, signum: signal.Signals, *, source: str, final: bool) -> None:
        self._signum = signum
        self._source = source
        self._final = final

    async def wait(self) -> Notice:
        arrived = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(self._signum, arrived.set)
        await arrived.wait()
        return Notice(source=self._source, reason=self._signum.name, final=self._final)

    async def acknowledge(self, notice: Notice) -> None:
        """Nobody to tell."""
