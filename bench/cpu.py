"""CPU seconds per process over a stretch of a run: the Dask client's share of the work.

    with CpuShare(client) as cpu:
        predict_scene(plan, out, client=client)
    cpu.share  # client process CPU seconds / CPU seconds of the client and every worker process

The client process is this one (with a LocalCluster, the scheduler runs in it too, as in a user's run);
the workers are its descendant processes (nannies and workers of a LocalCluster) plus any process a
worker reports with ``os.getpid`` on this host. CPU time is user + system, all threads, from psutil.
``loop_seconds`` is the part of the client's that its Dask event loop thread ("IO loop": the in-process
scheduler of a LocalCluster, the client's comms) spent; the rest is scenewatch's own work in the client.
``scheduler_seconds`` is the part of the others' that the scheduler's process spent, where that is not
this one (scenewatch's local cluster since issue 20, or ``dask scheduler`` on this host).
"""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Any

import psutil

__all__ = ["CpuShare"]


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return float(times.user + times.system)


class CpuShare:
    """Client and worker CPU seconds between ``__enter__`` and ``__exit__``."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._me = psutil.Process()
        self.client_seconds = 0.0
        self.worker_seconds = 0.0
        self.loop_seconds = 0.0
        self.scheduler_seconds = 0.0
        self._scheduler_pid: int | None = None

    def _scheduler(self) -> int | None:
        try:
            pid = int(self._client.run_on_scheduler(os.getpid))
        except Exception:  # noqa: BLE001 - a scheduler elsewhere (or gone): not counted apart
            return None
        return pid if pid != self._me.pid and psutil.pid_exists(pid) else None

    def _others(self) -> dict[int, psutil.Process]:
        procs = {p.pid: p for p in self._me.children(recursive=True)}
        if self._scheduler_pid is not None and self._scheduler_pid not in procs:
            procs[self._scheduler_pid] = psutil.Process(self._scheduler_pid)
        try:
            pids = self._client.run(os.getpid).values()
        except Exception:  # noqa: BLE001 - a client without workers yet: descendants only
            pids = []
        for pid in pids:
            if pid not in procs and pid != self._me.pid and psutil.pid_exists(pid):
                procs[pid] = psutil.Process(pid)
        return procs

    def _loop_threads(self) -> dict[int, float]:
        loops = {t.native_id for t in threading.enumerate() if t.name.startswith("IO loop")}
        try:
            return {t.id: t.user_time + t.system_time for t in self._me.threads() if t.id in loops}
        except psutil.Error:
            return {}

    def __enter__(self) -> CpuShare:
        self._scheduler_pid = self._scheduler()
        self._start_loop = self._loop_threads()
        self._start_me = _cpu(self._me)
        self._start = {pid: (p, _cpu(p)) for pid, p in self._others().items()}
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.client_seconds = _cpu(self._me) - self._start_me
        self.loop_seconds = sum(v - self._start_loop.get(k, 0.0) for k, v in self._loop_threads().items())
        now = self._others()
        total = 0.0
        for pid, process in now.items():
            before = self._start[pid][1] if pid in self._start else 0.0
            spent = max(0.0, _cpu(process) - before)
            total += spent
            if pid == self._scheduler_pid:
                self.scheduler_seconds = spent
        self.worker_seconds = total

    @property
    def share(self) -> float:
        """Client CPU seconds over all processes' CPU seconds."""
        whole = self.client_seconds + self.worker_seconds
        return self.client_seconds / whole if whole else 0.0
