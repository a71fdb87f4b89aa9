"""Peak memory summed over a process and all its descendants (Dask scheduler, nannies, workers)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil

__all__ = ["PeakMemory"]


class PeakMemory:
    """Samples the summed resident memory of this process tree every ``interval`` seconds while active.

    ``peak`` is in bytes. Resident memory counts shared library pages once per process, as the operating
    system does when it runs out of memory, so it is the figure that matters for "does it fit".
    """

    def __init__(self, interval: float = 0.1, pid: int | None = None) -> None:
        self.interval = interval
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def gib(nbytes: float) -> float:
    return nbytes / 2**30


def timed() -> float:
    return time.perf_counter()
