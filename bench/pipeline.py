"""How billing keeps up under load: usage rows written per second, and the pipeline lag
(the age of the oldest access-log line not yet consumed) sampled while wrk runs."""

from __future__ import annotations

import re
import threading
import urllib.request
from types import TracebackType

RECORDS = "crosslogic_billing_usage_records_total"
LAG = "crosslogic_billing_access_log_lag_seconds"


def sample(url: str, name: str) -> float:
    """One sample of the control plane's /metrics (all processes summed), 0 if absent."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


class LagSampler:
    """Samples the lag gauge every ``every`` seconds while in its ``with`` block."""

    def __init__(self, url: str, *, every: float = 0.25) -> None:
        self._url = url
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.samples: list[float] = []

    def _poll(self) -> None:
        while not self._stop.wait(self._every):
            self.samples.append(sample(self._url, LAG))

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0
