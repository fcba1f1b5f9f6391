"""The ``ray`` executor of an ingest run: decode on Ray tasks, encode on an actor pool.

The driver (the process that holds the store's write lock) discovers the files, hashes them
and skips the unchanged ones against the catalog, exactly as the in-process executor does.
The rest go to a Ray Data dataset, one block per file::

    from_items(files) -> flat_map(decode_rows)               Ray tasks, 1 CPU each: read, decode,
                                                               transcribe, preprocess, JPEGs
                      -> map_batches(EncodeRows, batch_size=models.batch_size)
                                                               actor pool: one actor per GPU
                                                               (num_gpus=1), else ingest.ray_actors
                                                               CPU actors
                      -> iter_batches() on the driver          Committer: one catalog transaction
                                                               per source, as in process

Each file's task yields one row per item and a last ``done`` row with the item count (or a
``fail`` row with the reason); rows of one file may come back in any order and through
different actors, so the driver groups them by file and commits a source once its ``done``
row and all its items have arrived (``indexers.ingest.commit``). The row format and the
remote code are in ``indexers.ingest.ray_tasks``.

Why Ray Data rather than Ray core tasks and actors: the pipeline is exactly its streaming
model (a map stage on tasks feeding a fixed actor pool, results streamed to the driver), and
it brings what a hand-made scheduler would have to rebuild: backpressure between the stages
(the object store never fills with decoded pages the encoders cannot keep up with), batching
across files for the encoders, retries of tasks whose worker died, and GPU placement of the
actors. Everything stays streaming: no stage waits for the previous one to finish.

Crash guarantees are the in-process ones, because the commits are: nothing is written on the
cluster, and a source is committed by the driver in one transaction. A driver killed mid-run
leaves committed sources committed and nothing half-written; the cluster drops the job's tasks
and actors; the next run skips what is committed and ingests the rest.

The files must be readable at the same path on every node (a shared file system), and mmrag
installed on every node. Ray is imported only when this executor runs (``mmrag[ray]``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from indexers.ingest.commit import Committer
from indexers.ingest.discover import Found
from indexers.ingest.interrupt import Interrupt
from indexers.ingest.ray_tasks import EncodeRows, bundle_row, decode_rows, file_row, item_from_row
from indexers.ingest.workers import DoneMsg, FailMsg, Twins, UnchangedMsg, failure_reason, source_info
from indexers.registry import Registry
from retriever import errors
from retriever.catalog import SourceInfo
from retriever.config import Config, IngestConfig
from retriever.encoders import build_clip_encoder, build_text_encoder
from retriever.errors import ConfigError, MmragError
from retriever.types import SourceStatus

__all__ = ["ActorPlan", "RayExecutor", "actor_plan", "import_ray", "ray_cluster"]

_log = logging.getLogger(__name__)
_BUNDLE_FILES, _BUNDLE_BYTES = 8, 4 << 20  # a decode task takes up to 8 files of together up to 4 MiB
NO_RESULT = "no result came back from the Ray cluster for this file"
INSTALL_HINT = "the ray executor needs Ray Data: pip install 'mmrag[ray]'"


@dataclass(frozen=True)
class ActorPlan:
    """The encoder actor pool: how many actors, and the CPUs and GPUs each one reserves."""

    actors: int
    num_cpus: float
    num_gpus: float


def actor_plan(resources: Mapping[str, float], cfg: IngestConfig, device: str = "auto") -> ActorPlan:
    """One actor per GPU of the cluster (at most ``ray_actors`` when set), unless the models run on
    the CPU; else ``ray_actors`` CPU actors (1 when 0), which together leave at least one CPU (or
    half of a small cluster) to the decode tasks."""
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu":
        return ActorPlan(min(cfg.ray_actors or gpus, gpus), 1.0, 1.0)
    actors = cfg.ray_actors or 1
    cpus = float(resources.get("CPU", 1.0))
    spare = max(cpus - 1.0, cpus / 2)
    return ActorPlan(actors, min(cfg.ray_actor_cpus, spare / actors), 0.0)


def import_ray(local: bool) -> Any:
    """``ray`` with its environment set first: no usage stats, and for a ``local`` cluster the
    addresses of this machine's loopback only (Ray reads both when it is first imported)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data  # the executor needs Ray Data, not only Ray core
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str = "", num_cpus: int | None = None) -> Iterator[Any]:
    """``ray`` connected for the block: to this process's existing connection (left open), to the
    cluster at ``address`` (or ``$RAY_ADDRESS``), or to a local cluster started here on 127.0.0.1
    (with ``num_cpus``; stopped at the end, by Ray, which knows the processes it started)."""
    address = address or os.environ.get("RAY_ADDRESS", "")
    ray = import_ray(local=not address)
    if ray.is_initialized():
        yield ray
        return
    quiet: dict[str, Any] = {"configure_logging": False, "log_to_driver": _log.isEnabledFor(logging.INFO)}
    if address:
        ray.init(address=address, **quiet)
    else:
        with _loopback(ray):
            context = ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        ip = context.address_info.get("node_ip_address", "")
        if not ip.startswith("127."):
            _log.warning("the local Ray cluster listens on %s, not on loopback only", ip)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _loopback(ray: Any) -> Iterator[None]:
    """A local cluster on loopback even when Ray was imported before ``import_ray`` set
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray picks the node address from the flag it read then."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if saved:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if saved:
            constants.ENABLE_RAY_CLUSTER = saved  # type: ignore[union-attr]


@dataclass(frozen=True)
class _Job:
    """A file for the cluster: where it is, what the driver hashed, whether it replaces a source."""

    path: Path
    info: SourceInfo
    updated: bool


class RayExecutor:
    """Runs the decode and encode stages of one ingest run on Ray (see the module docstring).

    ``models`` are the run's CLIP and text encoders: the actors build their own from the
    config, so those must be the models the config names.
    """

    def __init__(self, registry: Registry, config: Config, address: str = "", models: Sequence[Any] = ()) -> None:
        self.registry, self.config, self.address = registry, config, address
        self._check_models(models)

    def run(self, files: Sequence[Found], committer: Committer, within: tuple[str, ...] | None,
            interrupt: Interrupt) -> None:
        jobs = self._hash_and_skip(files, committer, within, interrupt)
        if not jobs:
            return
        committer.tracker.note("starting Ray")
        with ray_cluster(self.address) as ray, _quiet_data(ray):
            committer.tracker.note("")
            self._drain(self._dataset(ray, jobs, within), jobs, committer)
        for key in [k for k in jobs if committer.wants(k)]:  # never expected: Ray returns every row or fails
            committer.fail(FailMsg(key, str(jobs[key].path), jobs[key].info, NO_RESULT))

    def _check_models(self, models: Sequence[Any]) -> None:
        clip, text = (list(models) + [None, None])[:2]
        built = build_clip_encoder(self.config.models)
        if (clip is None) != (built is None) or (clip is not None and built is not None
                                                   and clip.model_id != built.model_id):
            raise ConfigError(f"the ray executor builds its models from the config; models.clip "
                              f"({self.config.models.clip}) is not the CLIP model of this run")
        if text is not None and text.model_id != build_text_encoder(self.config.models).model_id:
            raise ConfigError(f"the ray executor builds its models from the config; models.text "
                              f"({self.config.models.text}) is not the text model of this run")

    def _hash_and_skip(self, files: Sequence[Found], committer: Committer, within: tuple[str, ...] | None,
                       interrupt: Interrupt) -> dict[int, _Job]:
        """On the driver: hash each file (a few threads), record unchanged and unreadable ones and
        copy those with the bytes of another (``Twins``); the rest."""
        limit = self.config.ingest.max_file_bytes
        twins = Twins(committer.store, self.registry)

        def look(found: Found) -> SourceInfo | Exception | None:
            if interrupt.stop.is_set():
                return None
            try:
                return source_info(found, within, limit)
            except Exception as exc:
                return exc

        jobs: dict[int, _Job] = {}
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(files))), thread_name_prefix="mmrag-hash") as pool:
            for key, (found, info) in enumerate(zip(files, pool.map(look, files))):
                if info is None:
                    raise KeyboardInterrupt
                if isinstance(info, Exception):
                    committer.fail(FailMsg(key, str(found.path), None, failure_reason(info)))
                    continue
                prev = committer.store.catalog.get_source(info.uri)
                ok = prev is not None and prev.status == SourceStatus.OK
                if ok and prev is not None and prev.content_hash == info.content_hash:
                    committer.handle(UnchangedMsg(key))
                    continue
                try:
                    copy = twins.copy_of(key, found.path, info, ok)
                except Exception as exc:  # refused as a decode task would refuse it
                    committer.fail(FailMsg(key, str(found.path), info, failure_reason(exc)))
                    continue
                if copy is not None:
                    committer.handle(copy)  # a copy of a file of this run waits for that one's commit
                else:
                    jobs[key] = _Job(found.path, info, ok)
        return jobs

    def _dataset(self, ray: Any, jobs: Mapping[int, _Job], within: tuple[str, ...] | None) -> Any:
        plan = actor_plan(ray.cluster_resources(), self.config.ingest, self.config.models.device)
        _log.info("ray ingest: %d files, %s", len(jobs), plan)
        rows = bundles(jobs)
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one decode task per bundle
        work = {"registry": self.registry, "config": self.config, "within": within}
        ds = ds.flat_map(decode_rows, fn_kwargs=work, num_cpus=1)
        return ds.map_batches(
            EncodeRows, fn_constructor_kwargs={"models": self.config.models}, batch_size=self.config.models.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus or None,
        )

    def _drain(self, ds: Any, jobs: Mapping[int, _Job], committer: Committer) -> None:
        """Hand the rows to the committer as they come back; commit after each block."""
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            for batch in _mmrag_errors(batches):
                for i in range(len(batch["key"])):
                    self._row({name: column[i] for name, column in batch.items()}, jobs, committer)
                committer.commit_ready()
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # stops the dataset's execution when the run ends early
                close()

    @staticmethod
    def _row(row: Mapping[str, Any], jobs: Mapping[int, _Job], committer: Committer) -> None:
        key, tag, meta = int(row["key"]), str(row["tag"]), json.loads(row["meta"])
        job = jobs[key]
        if tag == "item":
            if committer.wants(key):
                media = (bytes(row["thumb"]) or None, bytes(row["preview"]) or None)
                item = item_from_row(meta, bytes(row["vectors"]), str(row["spaces"]))
                committer.add(key, item, media, place=int(meta["place"]))
            return
        info = job.info
        if "content_type" in meta:
            info = replace(info, content_type=meta["content_type"], family=meta["family"])
        if tag == "done":
            committer.handle(DoneMsg(key, info, meta["metadata"], meta["notes"], job.updated, int(meta["items"])))
        else:
            committer.fail(FailMsg(key, str(job.path), info, str(meta.get("reason") or "failed")))


def _mmrag_errors(batches: Iterator[Any]) -> Iterator[Any]:
    """``batches``, with a failure on the cluster that an mmrag error caused (a model that does not
    load in an encoder actor) raised as that error, so it reads as it would in process."""
    try:
        yield from batches
    except Exception as exc:
        found = _mmrag_cause(exc)
        if found is None:
            raise
        raise found from exc


def _mmrag_cause(exc: BaseException) -> MmragError | None:
    """The ``MmragError`` behind a Ray error: the exception itself or its cause, or for an actor that
    died in its constructor (Ray keeps only the text) one rebuilt from the last line that names it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for candidate in (current, getattr(current, "cause", None)):
            if isinstance(candidate, MmragError):
                return candidate
        named = re.findall(r"retriever\.errors\.(\w+): (.+)", str(getattr(current, "error_msg", "") or ""))
        cls = getattr(errors, named[-1][0], None) if named else None
        if isinstance(cls, type) and issubclass(cls, MmragError):
            return cls(named[-1][1])
        current = current.__cause__ or current.__context__
    return None


def bundles(jobs: Mapping[int, _Job]) -> list[dict[str, Any]]:
    """The decode tasks' input rows: small files together (a task costs ~0.1 s to schedule), each
    file over the size limit alone (its decoding is the task's work)."""
    rows: list[dict[str, Any]] = []
    bundle: list[tuple[int, dict[str, Any]]] = []
    size = 0
    for key, job in jobs.items():
        n = job.info.size or 0
        if bundle and (len(bundle) >= _BUNDLE_FILES or size + n > _BUNDLE_BYTES):
            rows.append(bundle_row(bundle))
            bundle, size = [], 0
        bundle.append((key, file_row(job.path, job.info)))
        size += n
    if bundle:
        rows.append(bundle_row(bundle))
    return rows


@contextlib.contextmanager
def _quiet_data(ray: Any) -> Iterator[None]:
    """Ray Data without its progress bars, banners and statistics (the run reports its own progress),
    unless this module's INFO logs are on."""
    if _log.isEnabledFor(logging.INFO):
        yield
        return
    ctx = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.enable_auto_log_stats, logger.level)
    ctx.enable_progress_bars = ctx.print_on_execution_start = ctx.enable_auto_log_stats = False
    logger.setLevel(logging.CRITICAL)  # a failure is raised to the caller, with its cause
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.enable_auto_log_stats, level = saved
        logger.setLevel(level)
