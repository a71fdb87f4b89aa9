"""How many local workers a run starts: one per core, or a few sharing the GPU a network runs on."""

from __future__ import annotations

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
