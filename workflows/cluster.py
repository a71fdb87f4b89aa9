"""The Dask client: a local cluster of worker processes (its scheduler in a process of its own), or an
existing scheduler.

The same job runs unchanged either way; only where the workers live differs. Workers run one task at a
time (one thread) and give the model the rest of the cores (torch intra-op threads), because on a few
cores a model uses them better than two concurrent tasks would. A network that runs on a GPU gets
:data:`GPU_WORKERS` workers instead of one per core (:func:`default_workers`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
from distributed import Client, Nanny, SpecCluster
from distributed.deploy.spec import ProcessInterface

from pipeline.errors import ConfigError
from pipeline.models.contract import ModelRef
from pipeline.models.loader import runs_on_gpu

__all__ = ["dask_client", "worker_count", "cpu_count", "default_workers", "threads_per_model", "GPU_WORKERS",
           "default_scenes_in_flight", "run_on_workers", "huge_pages_given_back", "worker_environ"]

log = logging.getLogger("scenewatch")

GPU_WORKERS = 4
"""Local workers sharing a GPU when no count is asked for. On one H200 with 16 cores (bench/gpu.py, 8192²
scene, resnet18 U-Net, fp16, warm cluster): 1 worker 6.6 MP/s, 2 workers 12.4, 4 workers 12.8-15.0,
8 workers 5.4, 16 (one per core) 4.4; 4 workers with 4 tiles per call 5.2. A tile costs a worker about
22 ms of reading, 11 ms in the model and 2 ms of blending, so a few workers keep the GPU busy, and more
processes only contend for it. All workers use the first GPU."""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers(model: str | os.PathLike[str] | ModelRef | None = None) -> int:
    """Local workers when none are asked for: one per core; :data:`GPU_WORKERS` (at most one per core)
    for a ``model`` that will run on a GPU here."""
    if model is not None and runs_on_gpu(model):
        return min(cpu_count(), GPU_WORKERS)
    return cpu_count()


_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}
"""glibc's allocator in local workers: every thread in one arena (the main heap, which grows as far as it
needs), no array mapped apart below 4 GiB, and nothing given back to the kernel below 4 GiB free at the top
of the heap: a tile's memory is reused by the next tile instead of being faulted in again (``dask_client``).
Either half alone kept most of the churn: one arena still maps arrays over glibc's adaptive threshold (32 MB
at most) and trims its heap; the thresholds alone leave each task thread an arena of its own, whose heap
(64 MB at most) cannot hold a larger array, which is then mapped apart anyway."""

_VIRTIO_BALLOON = "0x0005"  # the virtio device id of a memory balloon
_BALLOON_REPORTING = 5  # VIRTIO_BALLOON_F_REPORTING: the guest reports free blocks, which the host takes back


def huge_pages_given_back(sys_root: Path = Path("/sys")) -> bool:
    """Whether the huge pages numpy asks for (``madvise``, for every array of 4 MB or more) cost this machine
    more than they give: a virtual machine whose memory balloon reports free blocks of a huge page's order
    (free page reporting, as Firecracker and cloud-hypervisor VMs run), where the host takes every reported
    block back, so that a fresh huge page is backed again by the host 4 KiB at a time, with transparent huge
    pages given only where asked (``madvise``).

    Measured on such a VM (Firecracker, 2 cores, kernel 6.18, page_reporting_order 9): fresh arrays held
    in one process cost 8-13 ms of system time per MB with numpy's huge pages and 0.4 without (past the
    100-200 MB of huge blocks freed recently and not yet reported, which come at 0.17); ``scenewatch
    predict`` of an 8192² scene spent 4.4-5.8 s of system time, 2.4-2.6 without. Anywhere else (no balloon
    or no reporting, huge pages ``always`` or ``never``, a reporting order above a huge page's): False."""
    mm = sys_root / "kernel/mm/transparent_hugepage"
    try:
        if "[madvise]" not in (mm / "enabled").read_text():
            return False
        huge_order = (int((mm / "hpage_pmd_size").read_text()) // os.sysconf("SC_PAGE_SIZE")).bit_length() - 1
    except (OSError, ValueError):
        return False
    try:
        if int((sys_root / "module/page_reporting/parameters/page_reporting_order").read_text()) > huge_order:
            return False
    except (OSError, ValueError):
        pass  # a kernel without the parameter reports blocks of pageblock order, a huge page's
    for device in (sys_root / "bus/virtio/devices").glob("*"):
        try:
            if (device / "device").read_text().strip() == _VIRTIO_BALLOON and \
                    (device / "features").read_text().strip()[_BALLOON_REPORTING:_BALLOON_REPORTING + 1] == "1":
                return True
        except OSError:
            continue
    return False


def worker_environ(configured: Mapping[str, str] | None = None) -> dict[str, str]:
    """What scenewatch adds to the environment of the local workers it starts: glibc's allocator settings
    (:data:`_MALLOC`) and, on a VM whose host takes back free huge blocks (:func:`huge_pages_given_back`),
    ``NUMPY_MADVISE_HUGEPAGE=0`` (numpy reads it at import). A variable already set in this process's
    environment or in ``configured`` (Dask's pre-spawn environment) keeps its value: it is left out."""
    given = {**os.environ, **(configured or {})}
    added = {k: v for k, v in _MALLOC.items() if k not in given}
    if "NUMPY_MADVISE_HUGEPAGE" not in given and huge_pages_given_back():
        added["NUMPY_MADVISE_HUGEPAGE"] = "0"
    return added


# The scheduler's process: it must not outlive this one, however this one ends. On Linux the kernel kills
# it (SIGKILL) when the thread that started it ends (PR_SET_PDEATHSIG = 1; that thread runs the cluster's
# event loop, which outlives the cluster), and a parent that died before the call is caught by comparing
# the parent's pid after it; everywhere, a thread ends it within a second of its parent's end. Then
# `dask spec` runs Dask's own scheduler as `dask scheduler` would.
_SCHEDULER_MAIN = """\
import os, sys, threading, time
parent = int(sys.argv[1])
if sys.platform == "linux":
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
if os.getppid() != parent:
    os._exit(1)
def orphaned():
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
threading.Thread(target=orphaned, name="parent watch", daemon=True).start()
from distributed.cli.dask_spec import main
main(sys.argv[2:], prog_name="dask spec")
"""


def _inherited_config() -> str:
    """This process's Dask configuration as ``DASK_INTERNAL_INHERIT_CONFIG`` carries it (what a Nanny hands
    its worker): what was set in code here (``dask.config.set``) holds in the scheduler's process too. A
    value JSON cannot carry (an object set in code) goes as null."""
    text = json.dumps(dask.config.global_config, default=lambda _: None)
    return base64.urlsafe_b64encode(text.encode()).decode()


class _SchedulerProcess(ProcessInterface):
    """Dask's scheduler (``distributed.Scheduler``, started by ``dask spec``) in a process of its own, as
    the scheduler of a :class:`~distributed.SpecCluster`.

    What ``distributed.deploy.subprocess.SubprocessScheduler`` (experimental) does, except that: its stderr
    is this process's, not a pipe nobody reads (a long run blocked once the pipe filled), with its logs at
    ``log_level``; it dies with this process however that ends, killed included (:data:`_SCHEDULER_MAIN`);
    it runs in a session of its own, so a Ctrl-C in a terminal reaches this process only, which closes
    the cluster in order; and it imports what this process imports (``sys.path`` as ``PYTHONPATH``), since
    the scheduler unpickles the task graph.
    """

    def __init__(self, options: dict[str, Any], log_level: int, timeout: float = 60.0) -> None:
        super().__init__()
        self.options = options
        self.log_level = log_level
        self.timeout = timeout
        self.process: asyncio.subprocess.Process | None = None
        self._folder: str | None = None
        self.abrupt = False  # set by dask_client: closed, the scheduler has nothing left to do

    async def start(self) -> None:
        """Start the process and wait until the scheduler has written its address (its ``scheduler_file``)."""
        self._folder = tempfile.mkdtemp(prefix="scenewatch-scheduler-")
        file = Path(self._folder) / "scheduler.json"
        spec = json.dumps({"cls": "distributed.Scheduler", "opts": {**self.options, "scheduler_file": str(file)}})
        paths = [p for p in (*sys.path, os.environ.get("PYTHONPATH")) if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "DASK_INTERNAL_INHERIT_CONFIG": _inherited_config(),
               "DASK_LOGGING__DISTRIBUTED": logging.getLevelName(self.log_level).lower()}
        self.process = process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SCHEDULER_MAIN, str(os.getpid()), "--spec", spec, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while process.returncode is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):  # not written yet, or half written
                self.address = json.loads(file.read_text())["address"]
                break
            await asyncio.sleep(0.05)
        else:
            why = (f"exited with code {process.returncode} before it started (its error is above)"
                   if process.returncode is not None else f"did not start within {self.timeout:g} s")
            await self.close()
            raise RuntimeError(f"the Dask scheduler's process {why}")
        await super().start()

    async def close(self) -> None:
        """Wait for the process to end (the cluster has told the scheduler to close), killing it after 10 s,
        or at once if it has not started or is :attr:`abrupt`; then remove its folder."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            if self.address is None or self.abrupt:
                process.kill()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
                process.kill()
                await process.wait()
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
        await super().close()


class _Nanny(Nanny):
    """LocalCluster's nanny (a worker process, restarted if it dies) without the diagnostics every Dask
    server runs: a nanny here has no dashboard or Prometheus endpoint to feed, yet its event-loop tick,
    system monitor and counters cost this process 1.25 of the 1.5 ms of CPU a second it spent idle with
    two workers (0.25 without them)."""

    abrupt = False
    """Set by :func:`dask_client` once its worker has nothing left to do: closing kills the worker's process
    instead of asking it to close and waiting for it."""

    def start_periodic_callbacks(self) -> None:
        for name in ("tick", "ticks", "monitor", "shift_counters"):
            self.periodic_callbacks.pop(name, None)
        super().start_periodic_callbacks()

    async def kill(self, timeout: float = 5, reason: str = "nanny-kill") -> None:
        if self.abrupt and self.process is not None and self.process.is_alive():
            await self.process.process.kill()  # SIGKILL; what follows only joins the dead process
        await super().kill(timeout=timeout, reason=reason)


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, client: Client | None = None,
                model: str | os.PathLike[str] | ModelRef | None = None, threads: int = 1) -> Iterator[Client]:
    """A connected client: ``client`` as given, one for ``scheduler``, or a new local cluster of
    ``workers`` processes (default: :func:`default_workers` for ``model``, the model the cluster is for)
    of ``threads`` threads each, closed on exit.

    The local cluster is LocalCluster's (worker processes under nannies in this process) except that its
    scheduler runs in a process of its own (:class:`_SchedulerProcess`), which ends with this one: Dask's
    bookkeeping of every task (and its idle ticks) no longer costs this process, which is left with
    scenewatch's own part and the client's side of each message (issue 20: with the scheduler here, a
    4096² scene with polygons spent 5.4 % of its CPU in this process, most of it the scheduler's).
    """
    if client is not None:
        yield client
        return
    if scheduler:
        try:
            connected = Client(scheduler, timeout="20s")
        except OSError as err:
            raise ConfigError(f"scheduler {scheduler}: cannot connect ({err}); is `dask scheduler` running?") from err
        with connected:
            yield connected
        return
    n = workers or default_workers(model)
    if not workers and model is not None and n != cpu_count():
        log.info("model %s runs on the GPU: %d local workers share it (set `workers` to change)",
                 ModelRef.of(model).label, n)
    # Dask's nanny gives workers MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's adaptive mmap
    # threshold: every large tensor a model allocates is then a fresh mmap, page-faulted and unmapped. Measured
    # here: a resnet18 U-Net tile took 0.45 s in a worker against 0.30 s without it. glibc's own defaults still
    # return much of a tile's memory to the kernel between tiles (arrays over 32 MB are always mapped afresh,
    # and a task thread's arena is a heap of at most 64 MB that is trimmed as it empties), so the next tile
    # faults it in again: 350-630 k page faults and 1.6-2.1 s of system time per worker for an 8192² U-Net
    # scene with polygons. One arena that keeps what it frees (_MALLOC) cuts that to 180-230 k and 0.6-1.3 s:
    # predict 15.64 -> 14.48 s (U-Net) and 8.64 -> 8.17 s (NDVI), medians of alternated runs; the workers'
    # peak resident memory the same (830-910 MB against 740-1020). Memory stays bounded by the tiles in flight:
    # a worker keeps its peak, not more. A value the user set is kept. Users' own clusters: docs/scheduling.md.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    environ |= worker_environ(environ)  # and no numpy huge pages where the host takes them back
    # Dask's own errors ("Compute Failed" with a worker traceback for a tile that cannot be read) only
    # with -v: the error itself reaches the user as one line from the client.
    quiet = logging.ERROR if log.isEnabledFor(logging.INFO) else logging.CRITICAL
    # Idle costs, per second of a run: every Dask server's event-loop tick (every 20 ms, only to warn of a
    # blocked loop) and system monitor (every 0.5 s, for the dashboard) cost it 28 ms of CPU a second while
    # idle, against 6 ms at 1 s and 2 s (the scheduler and the workers; the nannies here skip them, _Nanny).
    # With the scheduler in its own process, this one spent 3 ms a second idle with 2 workers; 1.5 without
    # the cluster's sync of its name to the scheduler (every second, now 30) and the client's refresh of the
    # scheduler's identity (every 2 s, now 10; scheduler_info() still asks afresh); 0.25-0.5 without the
    # nannies' diagnostics. Each worker's statistical profiler (a thread walking every thread's stack every
    # 10 ms, for the dashboard's profile page) is off: NDVI 4096² with polygons, 3 alternated runs, 9.32
    # CPU-s a run with it against 9.01 without.
    quieter = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "2s",
               "distributed.client.scheduler-info-interval": "10s", "distributed.worker.profile.enabled": False}
    # LocalCluster(processes=True)'s settings for its scheduler and nannies; dashboard_address ":0": any
    # free port, so a second run beside a first never warns about 8787.
    scheduler_options = {"host": "127.0.0.1", "port": 0, "protocol": "tcp://", "dashboard": True,
                         "dashboard_address": ":0"}
    nanny = {"cls": _Nanny, "options": {"host": "127.0.0.1", "protocol": "tcp://", "nthreads": threads,
                                       "dashboard": False, "dashboard_address": None, "silence_logs": quiet,
                                       "memory_limit": 0}}
    spec = {"cls": _SchedulerProcess, "options": {"options": scheduler_options, "log_level": quiet}}
    with (dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **quieter}),
          SpecCluster(scheduler=spec, workers=dict.fromkeys(range(n), nanny), worker=nanny, silence_logs=quiet,
                      scheduler_sync_interval=30, name="scenewatch") as cluster,
          Client(cluster) as local):
        yield local
        _close_abruptly(cluster, local)


def _close_abruptly(cluster: SpecCluster, client: Client) -> None:
    """After a block that ended without an error (its results in hand), let the local cluster's close kill
    each worker's process that runs no task (a cancelled one still running included), and the scheduler's
    once told to close, instead of waiting for each to close and for its interpreter to tear down: 0.50 ->
    0.05 s and 0.45 CPU-s less with two workers. A worker still running a task is closed as before (it
    finishes the task first), and so is everything after an error."""
    idle = run_on_workers(client, _runs_nothing)
    for nanny in cluster.workers.values():
        if isinstance(nanny, _Nanny) and idle.get(nanny.worker_address):
            nanny.abrupt = True
    if isinstance(cluster.scheduler, _SchedulerProcess):
        cluster.scheduler.abrupt = True


def _runs_nothing(dask_worker: Any) -> bool:
    """In a worker: whether no task runs there."""
    return not dask_worker.state.executing and not dask_worker.state.long_running


def worker_count(client: Client) -> int:
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def run_on_workers(client: Client, function: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """``client.run(function, *args)`` on every worker that answers: a worker that dies or leaves under the
    call (the scheduler still listed it; Dask's ``CommClosedError``, an ``OSError``) is left out of the
    result instead of failing the caller, as it would fail a scene beside another whose model killed that
    worker. An error raised by ``function`` itself still propagates."""
    results = client.run(function, *args, on_error="return")
    for address, value in list(results.items()):
        if isinstance(value, OSError):
            log.debug("worker %s did not answer (%s); left out", address, value)
            del results[address]
        elif isinstance(value, BaseException):
            raise value
    return results


def threads_per_model(client: Client) -> int:
    """Intra-op threads for a model so that, on every host, the models that can run at once (each worker's
    threads, summed over the host's workers) times these threads = the cores.

    Asks each worker for its host's cores and the scheduler for each worker's threads; the smallest share
    wins. Counting workers alone gave a worker of 4 threads on 4 cores 4 threads per model: 16 threads
    contending for 4 cores.
    """
    cores = run_on_workers(client, cpu_count)
    slots = {address: w.get("nthreads", 1)
             for address, w in client.scheduler_info(n_workers=-1).get("workers", {}).items()}
    hosts: dict[str, tuple[int, int]] = {}  # host: (cores, threads of its workers)
    for address, n in cores.items():
        host = address.split("://")[-1].rsplit(":", 1)[0]
        known, threads = hosts.get(host, (0, 0))
        hosts[host] = (max(known, n), threads + max(1, slots.get(address, 1)))
    return max(1, min(n // threads for n, threads in hosts.values())) if hosts else 1


SCENE_MEMORY_BYTES = 2**30
"""Memory one scene in flight may take on the cluster, for :func:`default_scenes_in_flight`'s bound. A
scene holds at most two tasks of tiles per worker (``max_tiles_in_flight``) and the tile results its pieces
still need (about a column of tiles): with the default 1024 px tiles, 4 per task, a few bands in and a few
classes out as float32, a few hundred MB per worker at most. Measured (bench/batch_throughput.py, NDVI
4096² with polygons, 2 workers restarted before each run): the run's peak (client and workers resident)
was 1.6 GiB one scene at a time and 1.8 GiB with 4 in flight, so this bound is generous for NDVI and
leaves room for networks' larger outputs; a job that knows better sets ``dask.scenes_in_flight``."""


def default_scenes_in_flight(client: Client) -> int:
    """Scenes a batch computes at once when the job does not say: twice the cluster's worker threads (at
    least 2), so that while one scene per task slot waits on its tail (its last tiles, the COGs being
    assembled, the polygons' seams) another scene's tiles keep that slot busy; and at most one scene per
    :data:`SCENE_MEMORY_BYTES` of the workers' memory (their ``memory_limit``, else their hosts' memory),
    since every scene in flight adds its tiles in flight to what the workers hold.
    """
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    slots = sum(max(1, w.get("nthreads", 1)) for w in workers.values())
    memory = sum(w.get("memory_limit") or 0 for w in workers.values())
    if not memory or any(not w.get("memory_limit") for w in workers.values()):
        hosts = {address.split("://")[-1].rsplit(":", 1)[0]: total
                 for address, total in run_on_workers(client, _memory_total).items()}
        memory = sum(hosts.values())
    return max(1, min(max(2, 2 * slots), memory // SCENE_MEMORY_BYTES))


def _memory_total() -> int:
    import psutil

    return int(psutil.virtual_memory().total)
