"""The local cluster's processes: Dask's scheduler runs in a process of its own, sees the configuration set
here, and no scheduler or worker process outlives the process that started them, whether it closes the
cluster, is interrupted (SIGINT: the cluster is closed in order), stopped (SIGTERM) or killed (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import psutil
import pytest
from distributed import fire_and_forget

from workflows.cluster import dask_client

pytestmark = pytest.mark.slow

# A client that starts a local cluster of two workers, prints the pids of its scheduler and workers, and
# waits to be stopped.
CLIENT = """
import json, os, sys, time
from workflows.cluster import dask_client

if __name__ == "__main__":
    with dask_client(2) as client:
        pids = [client.run_on_scheduler(os.getpid), *client.run(os.getpid).values()]
        print(json.dumps(pids), flush=True)
        time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _survivors(pids: list[int], wait: float = 30.0) -> list[int]:
    """The processes of ``pids`` still running after up to ``wait`` seconds (a watchdog takes up to one)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_the_scheduler_runs_in_a_process_of_its_own_with_this_process_s_config() -> None:
    from workflows.cluster import _MALLOC

    before = {k: os.environ.get(k) for k in _MALLOC}
    with dask.config.set({"distributed.scheduler.allowed-failures": 7}), dask_client(1) as client:
        scheduler = client.run_on_scheduler(os.getpid)
        assert scheduler != os.getpid()
        assert client.run_on_scheduler(dask.config.get, "distributed.scheduler.allowed-failures") == 7
        assert client.run_on_scheduler(dask.config.get, "distributed.admin.tick.interval") == "1s"
        (env,) = client.run(lambda: dict(os.environ)).values()
        # the nannies start the workers with scenewatch's malloc settings, not Dask's MALLOC_TRIM_THRESHOLD_,
        # except where this process's environment already had one (a user's, or an earlier cluster's)
        assert {k: env.get(k) for k in _MALLOC} == {k: before[k] or v for k, v in _MALLOC.items()}
        assert env["MALLOC_TRIM_THRESHOLD_"] != "65536" or before["MALLOC_TRIM_THRESHOLD_"] == "65536"
        worker = next(iter(client.run(os.getpid).values()))
    assert _survivors([scheduler, worker]) == []


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_client_stopped_or_killed_leaves_no_scheduler_or_worker_behind(stop: signal.Signals) -> None:
    client = subprocess.Popen([sys.executable, "-c", CLIENT], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        pids = json.loads(client.stdout.readline())
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        client.send_signal(stop)
        client.wait(60)
        assert _survivors(pids) == []
    finally:
        client.kill()
        client.wait()


def _write_later(path: str, started: str, seconds: float) -> None:
    Path(started).touch()
    time.sleep(seconds)
    Path(path).write_text("done")


def test_a_worker_still_running_a_task_finishes_it_before_its_process_ends(tmp_path: Path) -> None:
    """An idle worker's process is killed when the block ends without an error (nothing left to lose);
    one still running a task (its future released) is closed as before: the task finishes first."""
    done, started = tmp_path / "done", tmp_path / "started"
    with dask_client(1) as client:
        fire_and_forget(client.submit(_write_later, str(done), str(started), 1.0, pure=False))
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
    assert done.read_text() == "done"
