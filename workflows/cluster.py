"""The Dask client: an embedded LocalCluster of worker processes, or an existing scheduler.

The same job runs unchanged either way; only where the workers live differs. Workers run one task at a
time (one thread) and give the model the rest of the cores (torch intra-op threads), because on a few
cores a model uses them better than two concurrent tasks would. A network that runs on a GPU gets
:data:`GPU_WORKERS` workers instead of one per core (:func:`default_workers`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

from pipeline.errors import ConfigError
from pipeline.models.contract import ModelRef
from pipeline.models.loader import runs_on_gpu

__all__ = ["dask_client", "worker_count", "cpu_count", "default_workers", "threads_per_model", "GPU_WORKERS",
           "default_scenes_in_flight"]

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


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, client: Client | None = None,
                model: str | os.PathLike[str] | ModelRef | None = None, threads: int = 1) -> Iterator[Client]:
    """A connected client: ``client`` as given, one for ``scheduler``, or a new LocalCluster of ``workers``
    processes (default: :func:`default_workers` for ``model``, the model the cluster is for) of ``threads``
    threads each, closed on exit."""
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
    # here: a resnet18 U-Net tile took 0.45 s in a worker against 0.30 s without it. Memory stays bounded by
    # the tiles in flight either way. Users' own clusters: see docs/scheduling.md.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    # dashboard_address ":0": any free port, so a second run beside a first never warns about 8787.
    # Dask's own errors ("Compute Failed" with a worker traceback for a tile that cannot be read) only
    # with -v: the error itself reaches the user as one line from the client.
    quiet = logging.ERROR if log.isEnabledFor(logging.INFO) else logging.CRITICAL
    # The scheduler runs in this process: its event-loop tick (every 20 ms, only to warn of a blocked loop)
    # and system monitor (every 0.5 s, for the dashboard) cost it 28 ms of CPU a second while idle, against
    # 6 ms at 1 s and 2 s; on a warm 4096² NDVI scene that was a third of what this process spent (issue 20).
    quieter = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "2s"}
    with (dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **quieter}),
          LocalCluster(n_workers=n, threads_per_worker=threads, processes=True, dashboard_address=":0",
                       silence_logs=quiet, memory_limit=0) as cluster,
          Client(cluster) as local):
        yield local


def worker_count(client: Client) -> int:
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def threads_per_model(client: Client) -> int:
    """Intra-op threads for a model so that, on every host, the models that can run at once (each worker's
    threads, summed over the host's workers) times these threads = the cores.

    Asks each worker for its host's cores and the scheduler for each worker's threads; the smallest share
    wins. Counting workers alone gave a worker of 4 threads on 4 cores 4 threads per model: 16 threads
    contending for 4 cores.
    """
    cores = client.run(cpu_count)
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
scene holds at most two tasks of tiles per worker and the tile results its pieces still need (about a
column of tiles); measured (bench/batch_throughput.py, NDVI 4096² with polygons, 2 workers), each scene in
flight added 0.2-0.3 GiB to the run's peak (see docs/benchmarks.md, issue 20)."""


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
                 for address, total in client.run(_memory_total).items()}
        memory = sum(hosts.values())
    return max(1, min(max(2, 2 * slots), memory // SCENE_MEMORY_BYTES))


def _memory_total() -> int:
    import psutil

    return int(psutil.virtual_memory().total)
