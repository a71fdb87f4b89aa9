"""A batch over a scene archive, as a scheduler runs it every night: resumable, isolated, auditable.

Data flow::

    job file [workflows.job.load_job] -> scenes [discover_scenes] -> lock the output folder [workflows.lock]
      -> per scene: fingerprint (input sha256, model identity, parameters) -> skip if done and intact,
         else plan -> predict [workflows.scene.predict_scene] -> vectors -> checksums -> manifest row;
         up to ``scenes_in_flight`` scenes computed at once on the one cluster, each in a thread of this
         process, so that workers never wait while one scene's COGs and polygons are finished
      -> per pair / series: change, timeline (same skip rule, keyed by the member scenes' fingerprints)
      -> STAC catalog of everything done [workflows.catalog] -> RunSummary (exit code)

Failure policy: a :class:`~pipeline.errors.ScenewatchError` (a bad file, wrong bands, no CRS...) fails
that scene only: it is recorded with its stage, class and one-line message, and the run goes on. A Dask
worker that dies mid-scene is first handled by Dask (lost tasks are recomputed on the other workers);
when Dask gives up (``KilledWorker``) the scene is run again up to ``retries`` times, then recorded failed.
Dask counts a death against every task the worker held, running or only waiting there, so with several
scenes in flight the scenes beside a killing one get ``KilledWorker`` too: a scene that met it while
sharing the cluster is run again alone (no other scene computes meanwhile; :class:`_ClusterShare`), and
only deaths met alone use its ``retries``. A scene whose own tasks kill workers fails alone, with one line.
Anything else is a bug: it is recorded against the scene and then propagates, stopping the run.
With several scenes in flight the manifest is still written by this thread alone (the scene threads
hand their stages and results back), and outcomes are reported in the scenes' order.

Why the input fingerprint hashes whole files: a reprocessed GeoTIFF often keeps its size, its header and
its first and last blocks (the edits are in the tiles in between), and copies do not keep mtimes, so
neither a stat nor a first/last-MB sample says "same pixels". Hashing runs at disk speed, far faster than
inference, and the manifest caches each file's sha256 by (path, size, mtime, inode) so an unchanged
archive is hashed once, not every night; a copied or touched but identical file is not redone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import functools
import hashlib
import itertools
import json
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import Client
from distributed.scheduler import KilledWorker

from pipeline.atomic import TEMP_MARKER, output_subfolder
from pipeline.config import ChangeConfig, ChangeOptions, PredictConfig, TimelineConfig, TimelineOptions, VectorizeConfig
from pipeline.errors import ConfigError, DiskFullError, ModelError, ScenewatchError
from pipeline.inference.read import clear_remote_cache
from pipeline.inference.stac import split_fragment
from pipeline.models.contract import BUILTIN_MODELS, ModelInfo, ModelRef
from pipeline.models.loader import describe_model
from pipeline.products import Tag, asset_of, class_names_from_tags, is_classes_path, name_of
from pipeline.storage import file_sha256
from workflows.catalog import CatalogAsset, CatalogEntry, publish_catalog
from workflows.cluster import dask_client, default_scenes_in_flight, threads_per_model
from workflows.job import EXECUTION_FIELDS, InputsSpec, Job, SceneInput, VectorsSpec, discover_scenes, load_job
from workflows.lock import JobLockedError, is_locked, job_lock
from workflows.manifest import MANIFEST_NAME, ItemRecord, Manifest, OutputRecord, RunRecord, open_manifest
from workflows.remote import (
    UNREADABLE,
    input_identity,
    outputs_in_bucket,
    prepare_remote,
    products_present,
    upload_outputs,
    upload_run_files,
)
from workflows.scene import plan_scene, predict_scene

if TYPE_CHECKING:
    from workflows.change import ChangeResult, TimelineResult

__all__ = [
    "run_job",
    "read_status",
    "RunSummary",
    "ItemOutcome",
    "StatusRow",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_JOB_INVALID",
    "EXIT_SOME_FAILED",
    "EXIT_LOCKED",
    "EXIT_DISK_FULL",
    "file_sha256",
]

log = logging.getLogger("scenewatch")

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error (a bug) failed an item, or the run itself (lock, manifest, folder) failed
EXIT_JOB_INVALID = ConfigError.exit_code  # 2: the job file (or an option) is invalid; nothing was run
EXIT_SOME_FAILED = 3  # the run finished, but at least one scene or product failed (see the manifest)
EXIT_LOCKED = JobLockedError.exit_code  # 4: another run of the job holds the output folder; nothing was run
EXIT_DISK_FULL = DiskFullError.exit_code  # 5: the output disk filled up; the run stopped, a rerun goes on

@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What this run did with one item: ``done`` (computed now), ``skipped`` (up to date) or ``failed``."""

    item_id: str
    kind: str
    status: str
    stage: str
    seconds: float
    attempts: int = 0
    error_class: str = ""
    message: str = ""
    unexpected: bool = False  # failed on a bug, not on a user-facing error


@dataclass(frozen=True, slots=True)
class RunSummary:
    job: str
    out_dir: Path
    run_id: int
    outcomes: tuple[ItemOutcome, ...]
    catalog: Path | None = None
    remote: str | None = None  # the s3:// output the products were uploaded to (out_dir is then the state folder)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def stopped(self) -> bool:
        """Whether the run stopped early because the output disk is full (the items not tried are left)."""
        return any(o.error_class == DiskFullError.__name__ for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return EXIT_DISK_FULL
        if any(o.unexpected for o in self.outcomes):
            return EXIT_ERROR
        return EXIT_SOME_FAILED if self.count("failed") else EXIT_OK


class _LazyDask:
    """The run's one Dask client, started when the first item needs it: a night with nothing new to do
    does not pay for a cluster."""

    def __init__(self, stack: contextlib.ExitStack, config: PredictConfig, client: Client | None,
                 model: ModelRef) -> None:
        self._stack, self._config, self._given, self._model = stack, config, client, model
        self._client: Client | None = None
        self._default_in_flight = 1
        self.own_cluster = client is None and config.scheduler is None

    def get(self) -> Client:
        if self._client is None:
            self._client = self._stack.enter_context(
                dask_client(self._config.workers, self._config.scheduler, self._given, model=self._model))
            self._default_in_flight = default_scenes_in_flight(self._client)
        return self._client

    def scenes_in_flight(self, asked: int | None) -> int:
        """``asked``, else what the started cluster holds; 1 while no cluster is started (until then every
        scene was skipped or failed before computing, and the next one to compute starts it)."""
        if asked is not None:
            return asked
        return self._default_in_flight if self._client is not None else 1


@dataclass(frozen=True, slots=True)
class _Context:
    """Everything fixed for the whole run, handed to each item."""

    job: Job
    manifest: Manifest
    run_id: int
    dask: _LazyDask
    ref: ModelRef
    info: ModelInfo
    identity: str
    config: PredictConfig
    params: str
    force: bool
    fingerprints: dict[str, str] = field(default_factory=dict)
    share: _ClusterShare = field(default_factory=lambda: _ClusterShare())


# --------------------------------------------------------------------------------------------------- run


def run_job(job_path: str | Path, out: str | Path | None = None, force: bool = False,
            client: Client | None = None, progress: bool | None = None,
            report: Callable[[ItemOutcome, int, int], None] | None = None, *,
            allow_factory: bool = False, scenes_in_flight: int | None = None,
            state: str | Path | None = None, inputs: InputsSpec | None = None) -> RunSummary:
    """Run a job file over its archive; see the module docstring for what is skipped, redone and recorded.

    ``allow_factory``: run a ``model.factory`` the job file names (see :func:`workflows.job.load_job`).
    ``out`` overrides the job's output folder; ``force`` redoes every item; ``client`` runs on an existing
    Dask client (else the job's ``dask:`` settings). ``progress``: a bar (None: only when interactive);
    ``report(outcome, index, total)`` is called after each item, in the order of the scenes whatever order
    they finish in (the CLI prints plain lines with it). ``scenes_in_flight``: scenes computed at once on
    the one cluster (else the job's ``dask: scenes_in_flight``, else
    :func:`workflows.cluster.default_scenes_in_flight`).
    ``state``: the local state folder of an ``s3://`` output (see :mod:`workflows.remote`).
    ``inputs``: a scene source instead of the job's (``run JOB --stac-search ...``; :func:`workflows.job.with_inputs`).
    Raises ConfigError (job invalid) or JobLockedError (another run holds the folder) before doing anything.

    Example::

        summary = run_job("workflows/jobs/naip_vegetation.yaml", out="out/naip")
        print(summary.count("done"), summary.count("failed"), summary.exit_code)
    """
    from tqdm import tqdm

    job = load_job(job_path, out, allow_factory=allow_factory, state=state, inputs=inputs)
    scenes = discover_scenes(job)
    config = job.spec.predict_config()
    ref = _model_ref(job, config)
    info = _model_info(job, ref)
    identity, model_sha256 = model_identity(ref, info)
    params = _scene_params(job, config)
    with job_lock(job.out_dir, job.name):
        _remove_stale_temps(job.out_dir)
        prepare_remote(job)
        with open_manifest(job.out_dir / MANIFEST_NAME) as manifest:
            others = [j for j in manifest.jobs() if j != job.name]
            if others:  # its STAC catalog and stale-file clean-up assume the folder is the job's alone
                raise ConfigError(f"job {job.path.name}: output folder {job.out_dir} holds the products of job "
                                  f"{others[0]!r}; give this job its own outputs.folder (or `out`)")
            run_id = manifest.start_run(job.name, _scenewatch_version(), identity, model_sha256,
                                        job.resolved_json())
            outcomes: list[ItemOutcome] = []
            units = _product_units(job, scenes)
            total = len(scenes) + len(units)
            bar = tqdm(total=total, desc=job.name, unit="item", disable=None if progress is None else not progress)
            with bar, contextlib.ExitStack() as stack:
                pool = stack.enter_context(_ScenePool())  # entered first: joined after the cluster closes
                ctx = _Context(job, manifest, run_id, _LazyDask(stack, config, client, ref), ref, info, identity,
                               config, params, force)

                def done(outcome: ItemOutcome) -> bool:
                    outcomes.append(outcome)
                    if report is not None:
                        report(outcome, len(outcomes), total)
                    if outcome.error_class == DiskFullError.__name__:
                        log.warning("%s; the run stops here, and a rerun after freeing space goes on",
                                    outcome.message)
                        return False  # every later item would fail the same way
                    return True

                in_flight = scenes_in_flight or job.spec.dask.scenes_in_flight
                try:
                    going = _run_scenes(ctx, scenes, pool, in_flight, bar, done)
                except BaseException:
                    pool.stopping.set()  # before the cluster closes under the scenes in flight
                    raise
                if going:
                    for unit in units:
                        outcome = _run_unit(ctx, unit)
                        bar.update(1)
                        if not done(outcome):
                            break
            summary = RunSummary(job.name, job.out_dir, run_id, tuple(outcomes), remote=job.remote)
            if job.spec.outputs.stac and not summary.stopped:  # on a full disk the catalog waits for the rerun
                summary = dataclasses.replace(summary, catalog=_publish(job, manifest))
            upload_run_files(job)  # an s3:// output: the catalog and a manifest snapshot beside the products
            counts = {s: summary.count(s) for s in ("done", "skipped", "failed")}
            manifest.finish_run(run_id, summary.exit_code, counts)
    return summary


# ------------------------------------------------------------------------------------------- fingerprints


def _input_sha256(manifest: Manifest, path: str, config: PredictConfig | None = None) -> str:
    """The file's sha256, from the manifest's cache when size, mtime and inode are unchanged; for a remote
    scene what identifies its content without reading it (a STAC item's JSON and its assets' ETags,
    :func:`workflows.remote.input_identity`)."""
    if path.startswith("/vsi"):
        return "href:" + path
    if "://" in path:
        return input_identity(path, (config or PredictConfig()).source_options)
    path = split_fragment(path)[0]  # an item of an item collection file (x.json#id): that file
    resolved = str(Path(path).resolve())
    st = os.stat(resolved)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or /dev/zero would block or never end here
        raise OSError(errno.EINVAL, "not a regular file")
    cached = manifest.cached_sha256(resolved, st.st_size, st.st_mtime_ns, st.st_ino)
    if cached is not None:
        return cached
    digest = file_sha256(resolved)
    manifest.store_sha256(resolved, st.st_size, st.st_mtime_ns, st.st_ino, digest)
    return digest


def model_identity(ref: ModelRef, info: ModelInfo) -> tuple[str, str | None]:
    """A canonical JSON identity of the model (what decides its outputs) and, for a bundle, its sha256.

    Built-in and factory models are identified by name, version and options (their code ships with
    scenewatch or the user's package); a bundle by the sha256 of every file in it (weights and spec), and
    its weights' sha256 (as its spec states it and every loading worker verifies) is the one recorded.
    """
    ident: dict[str, Any] = {"name": info.name, "version": info.version, "options": dict(ref.options)}
    bundle_sha = None
    if ref.factory:
        ident["factory"] = ref.factory
        ident["kwargs"] = dict(ref.kwargs)
    elif ref.source in BUILTIN_MODELS:
        ident["builtin"] = ref.source
    else:
        from pipeline.models.bundle import read_spec

        bundle_sha = read_spec(ref.source).sha256  # the weights' sha256, checked by every worker that loads it
        ident["weights_sha256"] = bundle_sha
        ident["bundle_files_sha256"] = _tree_sha256(Path(ref.source))  # spec, scaling, class names too
    return json.dumps(ident, sort_keys=True, default=str), bundle_sha


def _tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in name order)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def _scene_params(job: Job, config: PredictConfig) -> str:
    """The parameters that decide a scene's products (not how fast they are made), as canonical JSON."""
    tiling = config.model_dump(mode="json", exclude=set(EXECUTION_FIELDS))
    products = job.spec.products
    return json.dumps({"tiling": tiling, "naming": job.spec.outputs.naming,
                       "segmentation": products.segmentation.model_dump(mode="json"),
                       "vectors": _vectors_params(products.vectors) if products.vectors else None},
                      sort_keys=True)


def _vectors_params(spec: VectorsSpec) -> dict[str, Any]:
    # only the options the job sets: a job's fingerprint does not change when a default is added
    return {"formats": list(spec.formats), "options": spec.options.model_dump(mode="json", exclude_unset=True)}


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ scenes


class _Stopped(BaseException):
    """The run is stopping (Ctrl-C, SIGTERM): a scene thread gives up at its next stage."""


class _ClusterShare:
    """Which scenes compute on the cluster together, so that a dead worker is charged to the right scene.

    When a worker dies, Dask counts it against every task that worker held, the one it was running and
    those only waiting there (``suspicious``, up to ``distributed.scheduler.allowed-failures``), and then
    raises ``KilledWorker`` for each of them: with several scenes in flight the scenes beside the one whose
    model kills workers fail as well, and nothing in the error tells them apart. So an attempt of a scene
    holds the cluster either shared (the normal case: :meth:`attempt` with ``alone=False``) or alone (no
    other scene's attempt runs meanwhile; those waiting to start wait), and :meth:`attempt` yields whether
    another scene shared the cluster at any time during it. A ``KilledWorker`` met in company earns a
    rerun alone that uses no ``retries``; one met alone is the scene's own. With one scene in flight every
    attempt is alone, as before.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holders: dict[int, bool] = {}  # attempt -> whether another attempt ran beside it
        self._alone_waiting = 0
        self._alone_holding = False
        self._ids = itertools.count()

    @contextlib.contextmanager
    def attempt(self, alone: bool, stopping: threading.Event) -> Iterator[Callable[[], bool]]:
        """Hold the cluster for one attempt (waiting for its turn; :class:`_Stopped` once ``stopping`` is
        set); yields ``company()``: whether another scene's attempt shared the cluster so far."""
        me = next(self._ids)
        with self._cond:
            if alone:
                self._alone_waiting += 1
            try:
                # an attempt alone waits for the cluster to empty; one in company waits while one alone
                # holds it or waits for it (so that those never wait forever behind new scenes)
                while (self._alone_holding or (self._holders if alone else self._alone_waiting)):
                    if stopping.is_set():
                        raise _Stopped
                    self._cond.wait(0.5)
            finally:
                if alone:
                    self._alone_waiting -= 1
            company = bool(self._holders)
            for other in self._holders:  # those already running have company from now on too
                self._holders[other] = True
            self._holders[me] = company
            self._alone_holding = alone
        try:
            yield lambda: self._holders.get(me, False)
        finally:
            with self._cond:
                self._holders.pop(me, None)
                if alone:
                    self._alone_holding = False
                self._cond.notify_all()


class _ScenePool:
    """The threads that compute scenes side by side on the run's one Dask client.

    A thread runs one scene's plan, predict, vectors and checksums (Dask, GDAL and numpy release the GIL,
    and the heavy work is in the workers anyway); it never touches the manifest. Its stage changes and its
    result come back as events that the run's own thread applies, one at a time: the SQLite manifest keeps
    one connection, used by one thread, and every write stays its own short transaction. On the way out
    (normally, or on Ctrl-C / SIGTERM in the run's thread) the pool says ``stopping``, and waits for its
    threads: entered before the cluster, it is left after the cluster is closed, which ends their scenes
    (their temporary files are removed as on a single scene; their rows stay ``running`` and are redone).
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._events: queue.Queue[tuple[int, str, Any]] = queue.Queue()
        self._threads: dict[int, threading.Thread] = {}

    def __enter__(self) -> _ScenePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self._threads.values():
            thread.join()

    @property
    def running(self) -> int:
        return len(self._threads)

    def start(self, index: int, compute: Callable[[Callable[[str], None], threading.Event], Callable[[], ItemOutcome]]
              ) -> None:
        """Run ``compute(set_stage, stopping)`` in a thread; its result (a function that records the outcome)
        and every ``set_stage(name)`` arrive through :meth:`next_event`."""
        def main() -> None:
            record: Callable[[], ItemOutcome] | None
            try:
                record = compute(lambda stage: self._events.put((index, "stage", stage)), self.stopping)
            except _Stopped:
                record = None
            except BaseException as err:  # noqa: BLE001 - handed to the run's thread, which raises it
                record = functools.partial(_raise, err)
            self._events.put((index, "done", record))

        thread = threading.Thread(target=main, name=f"scenewatch-scene-{index}", daemon=True)
        self._threads[index] = thread
        thread.start()

    def next_event(self) -> tuple[int, str, Any]:
        """``(index, "stage", name)`` or ``(index, "done", record)``, waiting for the next one."""
        index, kind, value = self._events.get()
        if kind == "done":
            self._threads.pop(index).join()
        return index, kind, value


def _raise(err: BaseException) -> ItemOutcome:
    raise err


def _run_scenes(ctx: _Context, scenes: Sequence[SceneInput], pool: _ScenePool, asked: int | None,
                bar: Any, done: Callable[[ItemOutcome], bool]) -> bool:
    """Every scene, up to ``asked`` (see :meth:`_LazyDask.scenes_in_flight`) computed at once; ``done`` gets
    the outcomes in the scenes' order. Returns False when the run stops (the output disk is full): no new
    scene starts, those in flight finish and are recorded."""
    finished: dict[int, ItemOutcome] = {}
    reported = 0
    todo = iter(enumerate(scenes))
    going, exhausted = True, False

    def record(index: int, outcome: ItemOutcome) -> None:
        nonlocal going
        finished[index] = outcome
        bar.update(1)
        if outcome.error_class == DiskFullError.__name__:
            going = False

    while True:
        while going and not exhausted and pool.running < ctx.dask.scenes_in_flight(asked):
            item = next(todo, None)
            if item is None:
                exhausted = True
                break
            index, scene = item
            outcome = _begin_scene(ctx, scene)  # hashing and the manifest: in this thread
            if outcome is None:
                pool.start(index, functools.partial(_compute_scene, ctx, scene))
            else:
                record(index, outcome)
        while reported in finished:
            done(finished.pop(reported))
            reported += 1
        if not pool.running:
            return going
        index, kind, value = pool.next_event()
        if kind == "stage":
            ctx.manifest.set_stage(ctx.job.name, scenes[index].scene_id, value)
        else:
            record(index, value())


def _begin_scene(ctx: _Context, scene: SceneInput) -> ItemOutcome | None:
    """Fingerprint the scene and skip it if it is up to date, else mark it running and start the cluster
    if this is the first scene to compute. None: :func:`_compute_scene` goes on."""
    started = time.perf_counter()
    job, manifest = ctx.job, ctx.manifest
    where = f"scene {scene.scene_id}"
    try:
        digest = _input_sha256(manifest, scene.path, ctx.config)
    except OSError as err:
        manifest.begin(job.name, scene.scene_id, "scene", scene.path, "", ctx.run_id, _when(scene))
        message = f"{where}: input {scene.path} cannot be read ({err.strerror or err}); check the archive"
        return _failed(ctx, scene.scene_id, "scene", "fingerprint", type(err).__name__, message, started)
    fingerprint = _fingerprint(digest, ctx.identity, ctx.params)
    ctx.fingerprints[scene.scene_id] = fingerprint
    previous = manifest.get(job.name, scene.scene_id)
    # A store that does not answer today (or an asset gone upstream) does not undo a finished scene: its
    # products stay as they are, listed in the catalog, and the next run checks the input again.
    unchecked = digest.startswith(UNREADABLE) and previous is not None
    wanted = fingerprint
    if unchecked and previous is not None:
        wanted = previous.fingerprint or ""
    if not ctx.force and _up_to_date(previous, wanted, job.out_dir) and outputs_in_bucket(job, previous):
        if unchecked:
            log.warning("%s: cannot check whether the input changed (%s); its earlier products are kept", where,
                        digest.removeprefix(UNREADABLE))
        return ItemOutcome(scene.scene_id, "scene", "skipped", "done", time.perf_counter() - started,
                           previous.attempts if previous else 0)
    manifest.begin(job.name, scene.scene_id, "scene", scene.path, fingerprint, ctx.run_id, _when(scene))
    ctx.dask.get()
    return None


def _compute_scene(ctx: _Context, scene: SceneInput, set_stage: Callable[[str], None],
                   stopping: threading.Event) -> Callable[[], ItemOutcome]:
    """Plan, predict, vectors and checksums of a scene marked running; may run in a thread of its own, so it
    writes no manifest row: it calls ``set_stage`` and returns what records the outcome (called in the
    run's thread). Raises :class:`_Stopped` between stages once ``stopping`` is set."""
    job = ctx.job
    where = f"scene {scene.scene_id}"
    started = time.perf_counter()  # the scene's own time, not the cluster's start-up
    name = _product_name(job, scene)
    base = Path(name).name
    stage = "plan"
    attempts = 0  # runs of the scene in this run (the manifest's attempts)
    charged = 0  # those that use `retries`: a worker's death met alone on the cluster, an outage
    alone = False  # once a worker died under the scene, it runs alone: no other scene shares the blame

    def enter(next_stage: str) -> str:
        if stopping.is_set():
            raise _Stopped
        set_stage(next_stage)
        return next_stage

    while True:
        attempts += 1
        with ctx.share.attempt(alone, stopping) as company:
            try:
                stage = enter("plan")
                folder = output_subfolder(job.out_dir, Path(name).parent)
                dask = ctx.dask.get()
                plan = plan_scene(scene.path, _with_threads(ctx, dask), ctx.config, scene_id=base,
                                  tags=_date_tags(scene))
                stage = enter("predict")
                result = predict_scene(plan, folder, client=dask, progress=False)
                paths = [result.classes_path]
                if job.spec.products.segmentation.proba:
                    paths.append(result.proba_path)
                else:
                    result.proba_path.unlink(missing_ok=True)
                if job.spec.products.vectors is not None:
                    stage = enter("vectors")
                    proba = result.proba_path if job.spec.products.segmentation.proba else None
                    paths += _vectorize(ctx, scene, result.classes_path, proba, folder)
                stage = enter("checksum")
                outputs = [_output_record(job.out_dir, p) for p in paths]
                stage = enter("upload")
                upload_outputs(job, paths)  # an s3:// output: recorded done only once every object is complete
                properties = {**_when(scene), "bbox": _bbox_4326(result.classes_path), "source_id": scene.source_id}
                seconds = time.perf_counter() - started
                return functools.partial(_succeeded, ctx, scene.scene_id, outputs, seconds, properties, attempts)
            except KilledWorker as err:
                if stopping.is_set():
                    raise _Stopped from err
                if company():  # perhaps another scene's task killed the worker: run this one again, alone
                    log.warning("%s: a Dask worker died during %s, with other scenes on the cluster; running "
                                "the scene again alone", where, stage)
                    alone = True
                    continue
                charged += 1
                if charged <= job.spec.retries:
                    log.warning("%s: a Dask worker died during %s; running the scene again (%d/%d)", where, stage,
                                charged, job.spec.retries)
                    alone = True
                    continue
                message = (f"{where}: Dask workers died running its tasks during {stage}, {charged} time(s) with no "
                           f"other scene on the cluster (last task {_task_name(err)}); check the model and the "
                           "workers' memory (the scene is retried on the next run)")
                return functools.partial(_failed, ctx, scene.scene_id, "scene", stage, "KilledWorker", message,
                                         started, attempts)
            except ScenewatchError as err:
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                if charged < job.spec.retries and not stopping.is_set() and _transient(scene, stage):
                    charged += 1
                    log.warning("%s: %s; the input answers again, running the scene again (%d/%d)", where, message,
                                charged, job.spec.retries)
                    _clear_remote_caches(ctx)
                    continue
                return functools.partial(_failed, ctx, scene.scene_id, "scene", stage, type(err).__name__, message,
                                         started, attempts)
            except Exception as err:  # a bug: recorded as one, and the other scenes still run
                if stopping.is_set():
                    raise _Stopped from err  # the cluster closed under it: the run is stopping, not failing
                return functools.partial(_unexpected, ctx, scene.scene_id, "scene", stage, where, err, started,
                                         attempts)


def _clear_remote_caches(ctx: _Context) -> None:
    """Before a scene runs again after an outage: forget what GDAL remembers of it (a failed stat stays
    cached as "not recognized" or "no such file"), here, where the scene is planned, and in every worker,
    where its tiles are read. Best effort: a worker that cannot be reached now reads through its cache."""
    clear_remote_cache()
    try:
        ctx.dask.get().run(clear_remote_cache)
    except (OSError, TimeoutError, KilledWorker) as err:
        log.debug("GDAL's remote cache not cleared in every worker: %s", err)


def _task_name(err: KilledWorker) -> str:
    """The task a KilledWorker names, short: ``predict-scene_01.1a2b3c4d-0-4`` rather than its repr."""
    try:
        return str(err.task)
    except (AttributeError, IndexError):  # an older distributed, or an error built by hand
        return "unknown"


def _succeeded(ctx: _Context, scene_id: str, outputs: list[OutputRecord], seconds: float,
               properties: dict[str, Any], attempts: int) -> ItemOutcome:
    ctx.manifest.succeed(ctx.job.name, scene_id, outputs, seconds, properties)
    return ItemOutcome(scene_id, "scene", "done", "done", seconds, attempts)


def _transient(scene: SceneInput, stage: str) -> bool:
    """A remote scene that failed while being read (planning or predicting) but whose URL answers now (after
    botocore's retries waited out the store): an outage, not a bad input, so the scene is worth another
    try. A missing object or a 403 does not answer, and fails the scene at once."""
    from pipeline.storage import remote_reachable

    return stage in ("plan", "predict") and "://" in scene.path and remote_reachable(scene.path.split("#")[0])


def _unexpected(ctx: _Context, item_id: str, kind: str, stage: str, where: str, err: Exception, started: float,
                attempts: int = 1) -> ItemOutcome:
    """A failure that is no user-facing error: a bug. Its traceback goes to the log (shown with -vv or
    --debug); the item is recorded failed with a line that says so, and the run goes on."""
    log.debug("%s: unexpected error during %s", where, stage, exc_info=err)
    first = str(err).splitlines()[0] if str(err) else ""
    outcome = _failed(ctx, item_id, kind, stage, type(err).__name__,
                      f"{where}: unexpected error, please report it: {type(err).__name__}: {first}", started, attempts)
    return dataclasses.replace(outcome, unexpected=True)


def _failed(ctx: _Context, item_id: str, kind: str, stage: str, error_class: str, message: str,
            started: float, attempts: int = 1) -> ItemOutcome:
    seconds = time.perf_counter() - started
    ctx.manifest.fail(ctx.job.name, item_id, stage, error_class, message, seconds)
    log.info("%s", message)  # the outcome carries it; the CLI prints it once
    return ItemOutcome(item_id, kind, "failed", stage, seconds, attempts, error_class, message)


def _up_to_date(previous: ItemRecord | None, fingerprint: str, out_dir: Path) -> bool:
    """Done with the same fingerprint, and every recorded output still there with its checksum."""
    if previous is None or previous.status != "done" or previous.fingerprint != fingerprint:
        return False
    for output in previous.outputs:
        path = out_dir / output.path
        try:
            if path.stat().st_size != output.size or file_sha256(path) != output.sha256:
                return False
        except OSError:
            return False
    return bool(previous.outputs)


def _output_record(out_dir: Path, path: Path) -> OutputRecord:
    return OutputRecord(str(Path(path).resolve().relative_to(out_dir)), Path(path).stat().st_size, file_sha256(path))


def _when(scene: SceneInput) -> dict[str, Any]:
    if scene.when is None:
        return {}
    return {"start": scene.when.start.isoformat(), "end": scene.when.end.isoformat()}


def _date_tags(scene: SceneInput) -> dict[str, str]:
    """``SCENEWATCH_DATE``: the acquisition day (the first day of a year-long composite), so that change and
    timeline products, and any GIS user, can date a classes raster without its input beside it."""
    return {Tag.DATE: scene.when.start.date().isoformat()} if scene.when else {}


def _product_name(job: Job, scene: SceneInput) -> str:
    day = scene.when.start.date().isoformat() if scene.when else "undated"
    year = str(scene.when.start.year) if scene.when else "undated"
    return job.spec.outputs.naming.format(scene_id=scene.scene_id, date=day, year=year)


def _bbox_4326(path: Path) -> list[float]:
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        return [round(v, 9) for v in transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)]


# ------------------------------------------------------------------------------------ products plug-ins


def _vectorize(ctx: _Context, scene: SceneInput, classes: Path, proba: Path | None, folder: Path) -> list[Path]:
    from workflows.vectorize import vectorize_scene

    spec = ctx.job.spec.products.vectors
    assert spec is not None
    config = VectorizeConfig(**dict(spec.options), formats=spec.formats, max_pixels=ctx.config.max_pixels,
                             assume_crs=ctx.config.assume_crs)
    result = vectorize_scene(classes, folder, config, proba_path=proba, scene_id=name_of(classes),
                             acquired=scene.when.start.date() if scene.when and scene.when.instant else None,
                             client=ctx.dask.get(), progress=False)
    paths = [p for p in result.paths.values() if p.is_file()]
    if not paths:
        raise ScenewatchError(f"scene {classes.name}: the vectorizer wrote no file")
    return paths


@dataclass(frozen=True, slots=True)
class _Unit:
    """A product made from several scenes: a change pair or a timeline."""

    item_id: str
    kind: str
    members: tuple[SceneInput, ...]
    options: ChangeOptions | TimelineOptions
    model: str | None = None  # another model for this product (dnbr, dndvi...); None: the job's


def _product_units(job: Job, scenes: Sequence[SceneInput]) -> list[_Unit]:
    products = job.spec.products
    units: list[_Unit] = []
    if products.change is not None:
        if products.change.pairs == "consecutive":
            pairs = list(itertools.pairwise(scenes))
        elif products.change.pairs == "first-last":
            pairs = [(scenes[0], scenes[-1])] if len(scenes) > 1 else []
        else:
            pairs = list(itertools.combinations(scenes, 2))
        units += [_Unit(f"change_{a.scene_id}__{b.scene_id}", "change", (a, b), products.change.options,
                        products.change.model) for a, b in pairs]
    if products.timeline is not None and len(scenes) > 1:
        units.append(_Unit("timeline", "timeline", tuple(scenes), products.timeline.options,
                           products.timeline.model))
    return units


def _member_input(ctx: _Context, unit: _Unit, scene: SceneInput) -> str:
    """What a change or timeline reads for one date: the scene's classes raster made in this job (so no
    date is classified twice), or the scene itself when the product has a model of its own (dnbr...)."""
    record = ctx.manifest.get(ctx.job.name, scene.scene_id)
    if unit.model is None and record is not None and record.status == "done":
        for output in record.outputs:
            if is_classes_path(output.path):
                return str(ctx.job.out_dir / output.path)
    return scene.path


def _run_unit(ctx: _Context, unit: _Unit) -> ItemOutcome:
    started = time.perf_counter()
    job, manifest = ctx.job, ctx.manifest
    def usable(scene: SceneInput) -> bool:
        record = manifest.get(job.name, scene.scene_id)
        return scene.scene_id in ctx.fingerprints and record is not None and record.status == "done"

    missing = [m.scene_id for m in unit.members if not usable(m)]
    if unit.kind == "timeline" and len(unit.members) - len(missing) >= 2:
        # a timeline goes on without a failed date; once that date is fixed the fingerprint changes
        unit = dataclasses.replace(unit, members=tuple(m for m in unit.members if usable(m)))
        missing = []
    members = [ctx.fingerprints[m.scene_id] for m in unit.members if m.scene_id in ctx.fingerprints]
    source = " ".join(m.scene_id for m in unit.members)
    if missing:
        manifest.begin(job.name, unit.item_id, unit.kind, source, "", ctx.run_id, {})
        return _failed(ctx, unit.item_id, unit.kind, "inputs", "MissingInput",
                       f"{unit.kind} {unit.item_id}: input scene {', '.join(missing)} failed; see its own record",
                       started, 0)
    fingerprint = _fingerprint(*members, unit.model or "",
                               json.dumps(unit.options.model_dump(mode="json", exclude_unset=True), sort_keys=True))
    previous = manifest.get(job.name, unit.item_id)
    # a record from the older layout (change/change_A__B/..., timeline/timeline/...) is redone in this one
    if (not ctx.force and _up_to_date(previous, fingerprint, job.out_dir) and outputs_in_bucket(job, previous)
            and all(Path(o.path).parent == Path(unit.kind) for o in previous.outputs)):  # type: ignore[union-attr]
        return ItemOutcome(unit.item_id, unit.kind, "skipped", "done", time.perf_counter() - started)
    manifest.begin(job.name, unit.item_id, unit.kind, source, fingerprint, ctx.run_id, {})
    try:
        # every change pair and the timeline write into one folder per kind: change/A__B.change.tif,
        # timeline/timeline.areas.csv; the product name keeps them apart
        folder = output_subfolder(job.out_dir, Path(unit.kind))
        manifest.set_stage(job.name, unit.item_id, unit.kind)
        from workflows.change import detect_change, run_timeline

        paths = [_member_input(ctx, unit, m) for m in unit.members]
        dask = ctx.dask.get()
        model: ModelRef | str = unit.model or _with_threads(ctx, dask)
        # each date that is not yet classified is predicted as the job's scenes are (bands, tiling)
        result: ChangeResult | TimelineResult
        if isinstance(unit.options, ChangeOptions):
            result = detect_change(paths[0], paths[1], model, folder,
                                   ChangeConfig(**dict(unit.options), predict=ctx.config), client=dask, progress=False)
        else:
            result = run_timeline(paths, model, folder, TimelineConfig(**dict(unit.options), predict=ctx.config),
                                  client=dask, progress=False)
        files = _unit_files(folder, result)
        outputs = [_output_record(job.out_dir, p) for p in files]
        upload_outputs(job, files)
        seconds = time.perf_counter() - started
        manifest.succeed(job.name, unit.item_id, outputs, seconds, {})
        _remove_replaced(job.out_dir, previous, outputs)
        return ItemOutcome(unit.item_id, unit.kind, "done", "done", seconds, 1)
    except (ScenewatchError, KilledWorker) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        return _failed(ctx, unit.item_id, unit.kind, unit.kind, type(err).__name__, message, started)
    except Exception as err:  # noqa: BLE001 - a bug: recorded, and the run goes on
        return _unexpected(ctx, unit.item_id, unit.kind, unit.kind, f"{unit.kind} {unit.item_id}", err, started)


# ------------------------------------------------------------------------------------------------ helpers


def _unit_files(folder: Path, result: ChangeResult | TimelineResult) -> list[Path]:
    """The files one change pair or timeline wrote in its kind's shared folder: those named after its
    product (``A__B.change.tif``, ``A__B.gpkg``; ``timeline.areas.csv``) and the dates it classified
    itself (a product with a model of its own). Not another pair's files, nor a shared report."""
    dated = {d.classes_path.resolve() for d in result.dates} | {
        d.proba_path.resolve() for d in result.dates if d.proba_path is not None}
    return sorted(p for p in folder.iterdir() if p.is_file() and TEMP_MARKER not in p.name
                  and (p.name.startswith(f"{result.name}.") or p.resolve() in dated))


def _remove_replaced(out_dir: Path, previous: ItemRecord | None, outputs: Sequence[OutputRecord]) -> None:
    """Delete what the item's previous record listed and this run did not write again (the older layout's
    files), and the folders that leaves empty: every product is on disk once, where the manifest says."""
    if previous is None:
        return
    kept = {o.path for o in outputs}
    for old in previous.outputs:
        if old.path in kept:
            continue
        path = out_dir / old.path
        if not path.resolve().is_relative_to(out_dir.resolve()):  # never outside the output folder
            continue
        path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == out_dir or not parent.is_relative_to(out_dir):
                break
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break


def _with_threads(ctx: _Context, dask: Client) -> ModelRef:
    """On our own LocalCluster, give each worker's model its share of the cores (as predict_scene does)."""
    if not ctx.dask.own_cluster:
        return ctx.ref
    return ctx.ref.with_threads(threads_per_model(dask))


def _model_ref(job: Job, config: PredictConfig) -> ModelRef:
    spec = job.spec.model
    if spec.factory is not None:
        return ModelRef.from_factory(spec.factory, **spec.kwargs).with_options(**spec.options)
    assert spec.name is not None
    source = spec.name if spec.name in BUILTIN_MODELS else str(job.resolve(spec.name))
    # a precision among the model's own options wins over tiling.precision (default "auto")
    return ModelRef.of(source, **({"precision": config.precision} | dict(spec.options)))


def _model_info(job: Job, ref: ModelRef) -> ModelInfo:
    try:
        return describe_model(ref)  # a bundle's spec, without building the network in this process
    except ModelError as err:
        raise ConfigError(f"job {job.path.name}: model: {err}") from err
    except TypeError as err:  # a factory or model refusing the job's options
        raise ConfigError(f"job {job.path.name}: model: options do not fit the model ({err})") from err


def _scenewatch_version() -> str:
    try:
        return version("scenewatch")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _remove_stale_temps(out_dir: Path) -> None:
    """Temporary files of a run that was killed: only ever ours (the marker), and safe under the lock."""
    for leftover in out_dir.rglob(f"*{TEMP_MARKER}*"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


def _publish(job: Job, manifest: Manifest) -> Path:
    """The catalog of the products in the output folder: one item per done scene whose recorded files are
    all there (an ``s3://`` output's: in the state folder and in the bucket,
    :func:`workflows.remote.products_present`), whether or not this run still found the scene (a search's
    window moved on, a file left the archive: its products are the user's and stay, listed), then its
    change pairs and timeline. Items of products no longer there are dropped
    (:func:`workflows.catalog.publish_catalog`; from the bucket too, :func:`workflows.remote.upload_run_files`);
    no product is ever deleted for it."""
    entries = []
    present = products_present(job)
    for record in manifest.items(job.name):
        if record.kind != "scene" or record.status != "done" or "bbox" not in record.properties:
            continue
        if not record.outputs or not all(present(o.path) for o in record.outputs):
            continue
        assets = []
        extra: dict[str, str] = {}
        for output in record.outputs:
            path = job.out_dir / output.path
            key, media, roles, title = asset_of(path)
            if key == "classes":
                title = f"classes ({', '.join(_class_names(path))})"
                extra |= _threshold_property(path)
            assets.append(CatalogAsset(key, path, media, roles, title))
        props = record.properties
        start = dt.datetime.fromisoformat(props["start"]) if "start" in props else None
        end = dt.datetime.fromisoformat(props["end"]) if "end" in props else None
        entries.append(CatalogEntry(record.item_id, tuple(props["bbox"]), start, end, tuple(assets),
                                    {"scenewatch:fingerprint": record.fingerprint, **extra}))
    entries += _product_entries(job, manifest, {e.item_id: e for e in entries})
    return publish_catalog(job.out_dir, job.name, job.name, entries)


def _product_entries(job: Job, manifest: Manifest, scene_entries: dict[str, CatalogEntry]) -> list[CatalogEntry]:
    """One STAC item per done change pair and timeline, as scenes have: its footprint the union of its
    dates' footprints, its time range theirs, its assets typed by :func:`pipeline.products.asset_of`
    (change COG as data, quicklooks as overview, area tables as metadata). Skipped when a date is no longer
    published or a recorded file is gone."""
    entries = []
    for record in manifest.items(job.name):
        if record.kind not in ("change", "timeline") or record.status != "done" or not record.outputs:
            continue
        dates = [scene_entries.get(member) for member in record.source.split()]
        if not dates or any(d is None for d in dates):
            continue
        paths = [job.out_dir / o.path for o in record.outputs]
        if not all(p.is_file() for p in paths):
            continue
        boxes = [d.bbox for d in dates if d is not None]
        bbox = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes))
        starts = [t for d in dates if d is not None for t in (d.start, d.end) if t is not None]
        assets: dict[str, CatalogAsset] = {}
        for path in paths:
            key, media, roles, title = asset_of(path)
            assets.setdefault(key, CatalogAsset(key, path, media, roles, title))
        entries.append(CatalogEntry(record.item_id, bbox, min(starts, default=None), max(starts, default=None),
                                    tuple(assets.values()),
                                    {"scenewatch:fingerprint": record.fingerprint, "scenewatch:product": record.kind,
                                     "scenewatch:scenes": record.source.split()}))
    return entries


def _threshold_property(path: Path) -> dict[str, str]:
    """``scenewatch:threshold``: the index threshold a classes raster was made with (its SCENEWATCH_THRESHOLD
    tag: value, auto/fallback/fixed and why), for the scene's STAC item."""
    import rasterio

    with rasterio.open(path) as src:
        value = src.tags().get(Tag.THRESHOLD)
    return {"scenewatch:threshold": value} if value else {}


def _class_names(path: Path) -> list[str]:
    import rasterio

    with rasterio.open(path) as src:
        return [name for name in class_names_from_tags(src.tags()) if name]


# -------------------------------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class StatusRow:
    item_id: str
    kind: str
    status: str  # done, failed, pending, running, interrupted, changed
    stage: str
    finished_at: str
    message: str


def read_status(job_path: str | Path, out: str | Path | None = None, state: str | Path | None = None,
                inputs: InputsSpec | None = None) -> tuple[Job, list[StatusRow], RunRecord | None]:
    """What the manifest says of every scene the job now finds (plus recorded products) and of the last
    run, without running anything.

    ``pending``: never run; ``changed``: done, but its input file was modified since (the next run
    re-hashes it and redoes the scene if the content differs);
    ``interrupted``: a run stopped during it; ``running``: a run holding the lock is on it now.
    """
    job = load_job(job_path, out, allow_factory=True, state=state, inputs=inputs)  # reading it runs no model
    scenes = discover_scenes(job)
    path = job.out_dir / MANIFEST_NAME
    locked = is_locked(job.out_dir)
    if not path.exists():
        return job, [StatusRow(s.scene_id, "scene", "pending", "", "", "") for s in scenes], None
    with open_manifest(path, create=False) as manifest:
        records = {r.item_id: r for r in manifest.items(job.name)}
        runs = manifest.runs(job.name)
        rows = []
        for scene in scenes:
            rec = records.pop(scene.scene_id, None)
            if rec is None:
                rows.append(StatusRow(scene.scene_id, "scene", "pending", "", "", ""))
                continue
            status = rec.status
            if status == "running" and not locked:
                status = "interrupted"
            elif status == "done" and _input_changed(manifest, scene.path):
                status = "changed"
            rows.append(StatusRow(rec.item_id, rec.kind, status, rec.stage or "", rec.finished_at or "",
                                  rec.error_message or ""))
        for rec in records.values():
            if rec.kind != "scene":
                status = "interrupted" if rec.status == "running" and not locked else rec.status
                rows.append(StatusRow(rec.item_id, rec.kind, status, rec.stage or "", rec.finished_at or "",
                                      rec.error_message or ""))
    return job, rows, runs[-1] if runs else None


def _input_changed(manifest: Manifest, path: str) -> bool:
    if "://" in path:
        return False
    try:
        resolved = str(Path(path).resolve())
        st = os.stat(resolved)
    except OSError:
        return True
    return manifest.cached_sha256(resolved, st.st_size, st.st_mtime_ns, st.st_ino) is None
