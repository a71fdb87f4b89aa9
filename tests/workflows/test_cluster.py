"""How many local workers a run starts: one per core, or a few sharing the GPU a network runs on."""

from __future__ import annotations

import pytest

from pipeline.models.contract import ModelRef
from pipeline.models.loader import runs_on_gpu
from pipeline.models.network import _visible, visible_gpus
from workflows.cluster import GPU_WORKERS, cpu_count, default_workers


def test_gpus_are_counted_through_cuda_visible_devices():
    assert _visible(2, None) == 2
    assert _visible(2, "1") == 1
    assert _visible(2, "0,1,2") == 2  # ids beyond the GPUs there are do not add any
    assert _visible(1, "GPU-8f3b2c51") == 1  # UUIDs count like indexes
    assert _visible(4, "") == 0 and _visible(4, "-1") == 0  # both hide every GPU
    assert _visible(4, "0,-1,1") == 1  # CUDA stops at the first negative id


def test_networks_share_the_gpu_and_everything_else_gets_a_worker_per_core(tmp_path):
    bundle = str(tmp_path / "unet")  # a bundle path: its weights are not read to decide
    assert not runs_on_gpu("vegetation")  # spectral models are numpy on the CPU
    assert not runs_on_gpu(ModelRef.of(bundle, device="cpu"))
    assert not runs_on_gpu(ModelRef.of(bundle, precision="int8"))  # OpenVINO on the CPU
    assert runs_on_gpu(ModelRef.of(bundle, device="cuda:0"))
    assert runs_on_gpu(bundle) == (visible_gpus() > 0)
    assert default_workers() == default_workers("vegetation") == cpu_count()
    assert default_workers(ModelRef.of(bundle, device="cuda")) == min(cpu_count(), GPU_WORKERS)
    assert default_workers(ModelRef.of(bundle, device="cpu")) == cpu_count()


def test_model_threads_share_the_cores_among_every_worker_thread():
    """workers x threads per worker x threads per model = the cores (at least one thread per model)."""
    from distributed import Client, LocalCluster

    from workflows.cluster import threads_per_model

    cores = cpu_count()
    for workers, threads, expected in ((1, 1, cores), (2, 1, cores // 2), (1, 2, cores // 2), (2, 2, cores // 4)):
        with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None,
                          scheduler_port=0) as cluster, Client(cluster) as client:
            client.wait_for_workers(workers)
            assert threads_per_model(client) == max(1, expected), (workers, threads)


def test_scenes_in_flight_default_to_twice_the_worker_threads_within_the_workers_memory():
    """A batch's default scenes in flight: two per task slot of the cluster (two even on one worker of one
    thread), and no more than one per SCENE_MEMORY_BYTES of the workers' memory limits (their hosts'
    memory when they have none)."""
    import psutil
    from distributed import Client, LocalCluster

    from workflows.cluster import SCENE_MEMORY_BYTES, default_scenes_in_flight

    gib = 2**30
    for workers, threads, limit, expected in ((1, 1, 0, 2), (1, 3, 0, 6), (2, 2, 0, 8),
                                              (2, 1, int(1.5 * SCENE_MEMORY_BYTES), 3),
                                              (1, 2, SCENE_MEMORY_BYTES // 2, 1)):
        with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None,
                          scheduler_port=0, memory_limit=limit) as cluster, Client(cluster) as client:
            client.wait_for_workers(workers)
            if not limit and psutil.virtual_memory().total < 8 * gib:
                continue  # a host this small bounds the default by its memory instead (its workers are local)
            assert default_scenes_in_flight(client) == expected, (workers, threads, limit)


def _sysfs(root, *, thp="always [madvise] never", order="9", balloon_features="0110010100000000", device="0x0005"):
    """A /sys tree with what huge_pages_given_back reads (a 2 MB huge page over 4 KiB pages, x86's)."""
    mm = root / "kernel/mm/transparent_hugepage"
    mm.mkdir(parents=True)
    (mm / "enabled").write_text(thp + "\n")
    (mm / "hpage_pmd_size").write_text("2097152\n")
    if order is not None:
        params = root / "module/page_reporting/parameters"
        params.mkdir(parents=True)
        (params / "page_reporting_order").write_text(order + "\n")
    for name, (dev, features) in {"virtio0": (device, balloon_features),
                                  "virtio1": ("0x0002", "0010001001100100000")}.items():  # a block device
        folder = root / "bus/virtio/devices" / name
        folder.mkdir(parents=True)
        (folder / "device").write_text(dev + "\n")
        (folder / "features").write_text(features + "\n")
    return root


def test_huge_pages_are_given_back_only_where_a_balloon_reports_free_huge_blocks_and_numpy_asks_for_them(tmp_path):
    import os

    from workflows.cluster import huge_pages_given_back

    if os.sysconf("SC_PAGE_SIZE") != 4096:
        pytest.skip("the trees below describe 2 MB huge pages over 4 KiB pages")
    assert huge_pages_given_back(_sysfs(tmp_path / "firecracker"))
    assert huge_pages_given_back(_sysfs(tmp_path / "no-order-parameter", order=None))  # pageblock order: 9
    assert not huge_pages_given_back(_sysfs(tmp_path / "no-reporting", balloon_features="0110000000000000"))
    assert not huge_pages_given_back(_sysfs(tmp_path / "no-balloon", device="0x0004"))
    assert not huge_pages_given_back(_sysfs(tmp_path / "larger-blocks", order="10"))  # huge pages stay backed
    assert not huge_pages_given_back(_sysfs(tmp_path / "always", thp="[always] madvise never"))  # numpy's ask moot
    assert not huge_pages_given_back(_sysfs(tmp_path / "never", thp="always madvise [never]"))
    assert not huge_pages_given_back(tmp_path / "no-sysfs")


def _numpy_huge_pages() -> tuple[str | None, bool]:
    import os

    from numpy._core.multiarray import _get_madvise_hugepage

    return os.environ.get("NUMPY_MADVISE_HUGEPAGE"), bool(_get_madvise_hugepage())


def test_local_workers_ask_numpy_for_huge_pages_only_where_the_host_keeps_them(monkeypatch):
    """Whatever this machine is, the workers' numpy follows huge_pages_given_back; a user's own
    NUMPY_MADVISE_HUGEPAGE wins."""
    from workflows.cluster import dask_client, huge_pages_given_back

    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "")  # so that the nanny's setting of it is undone too
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE")
    with dask_client(1) as client:
        (seen,) = client.run(_numpy_huge_pages).values()
    if huge_pages_given_back():
        assert seen == ("0", False)
    else:
        assert seen[0] is None
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    with dask_client(1) as client:
        (seen,) = client.run(_numpy_huge_pages).values()
    assert seen == ("1", True)


def test_worker_environment_adds_only_what_neither_this_process_nor_dask_s_config_sets(monkeypatch):
    from workflows.cluster import _MALLOC, huge_pages_given_back, worker_environ

    for name in (*_MALLOC, "NUMPY_MADVISE_HUGEPAGE"):
        monkeypatch.delenv(name, raising=False)
    numpy = {"NUMPY_MADVISE_HUGEPAGE": "0"} if huge_pages_given_back() else {}
    assert worker_environ() == {**_MALLOC, **numpy}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    added = worker_environ({"MALLOC_ARENA_MAX": "4", "NUMPY_MADVISE_HUGEPAGE": "1"})
    assert added == {"MALLOC_MMAP_THRESHOLD_": _MALLOC["MALLOC_MMAP_THRESHOLD_"]}
