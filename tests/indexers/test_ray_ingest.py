"""Ingest on Ray Data (``executor="ray"``): same items and vectors as the in-process executor, a
killed Ray ingest leaves the store consistent and a rerun finishes it, bad files are recorded, and
``mmrag ingest --ray`` starts its own local cluster on loopback.

One local Ray cluster (2 CPUs, 127.0.0.1 only) serves the module; it is started by the same code
the CLI uses (``ray_cluster``) and stopped by Ray at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.testing import crash
from pipelines.testing.compare import item_keys
from retriever.maintenance.verify import item_rows

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]
pytest.importorskip("ray.data")

REPO = Path(__file__).resolve().parents[2]
PDF, AUDIO = "docling__multi_page.pdf", "librispeech_test-clean_4507-16021-0012.wav"


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray cluster for this module; its GCS address."""
    from indexers.ingest.ray_executor import ray_cluster

    with ray_cluster(num_cpus=2) as ray:
        yield ray.get_runtime_context().gcs_address


def _listening(pid: int) -> set[str]:
    """The TCP addresses that ``pid`` and its descendants listen on (from /proc: host:port)."""
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        frontier += [int(c) for c in children]
        tree.update(int(c) for c in children)
    inodes: set[str] = set()
    for p in tree:
        try:
            for fd in Path(f"/proc/{p}/fd").iterdir():
                target = os.readlink(fd) if fd.is_symlink() else ""
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                host, port = fields[1].split(":")
                out.add(f"{_ip(host)}:{int(port, 16)}")
    return out


def _ip(hex_host: str) -> str:
    raw = bytes.fromhex(hex_host)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    v6 = b"".join(words)
    if v6[:12] == b"\0" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in v6[12:])
    return ":".join(v6[i:i + 2].hex() for i in range(0, 16, 2))


def test_the_local_cluster_listens_on_loopback_only(ray_address: str) -> None:
    addresses = _listening(os.getpid())
    assert ray_address.startswith("127.0.0.1:") and ray_address.split(":")[1] in {a.split(":")[-1] for a in addresses}
    assert addresses and all(a.startswith("127.") for a in addresses), addresses


def test_actor_plan_and_decode_bundles() -> None:
    from indexers.ingest.ray_executor import ActorPlan, _Job, actor_plan, bundles
    from retriever.catalog import SourceInfo
    from retriever.config import IngestConfig

    cfg = IngestConfig()
    assert actor_plan({"CPU": 16, "GPU": 4}, cfg) == ActorPlan(4, 1.0, 1.0)  # one actor per GPU
    assert actor_plan({"CPU": 16, "GPU": 4}, IngestConfig(ray_actors=2)) == ActorPlan(2, 1.0, 1.0)
    assert actor_plan({"CPU": 16, "GPU": 4}, cfg, device="cpu") == ActorPlan(1, 1.0, 0.0)
    assert actor_plan({"CPU": 2}, IngestConfig(ray_actors=2)) == ActorPlan(2, 0.5, 0.0)  # a CPU left to decode
    assert actor_plan({"CPU": 1}, cfg) == ActorPlan(1, 0.5, 0.0)
    sizes = [10, 20, 5 << 20, 30] + [1] * 9
    jobs = {k: _Job(Path(f"/d/{k}"), SourceInfo(f"/d/{k}", str(k), "h", n, 0.0), False) for k, n in enumerate(sizes)}
    keys = [[key for key, _ in json.loads(row["files"])] for row in bundles(jobs)]
    assert keys == [[0, 1], [2], [3, 4, 5, 6, 7, 8, 9, 10], [11, 12]]  # big files alone, at most 8 a task


def test_a_model_error_on_the_cluster_reads_as_in_process() -> None:
    from indexers.ingest.ray_executor import _mmrag_cause
    from retriever.errors import ModelLoadError

    class ActorDied(Exception):
        error_msg = "...\nretriever.errors.ModelLoadError: could not load open_clip model 'x'\n"

    assert _mmrag_cause(RuntimeError("outer")) is None
    try:
        try:
            raise ActorDied("actor died")
        except ActorDied as inner:
            raise RuntimeError("system error") from inner
    except RuntimeError as outer:
        found = _mmrag_cause(outer)
    assert isinstance(found, ModelLoadError) and str(found) == "could not load open_clip model 'x'"


# ---- 1 + 3: the same store as in process; bad files recorded, the rest committed --------------------
@pytest.fixture(scope="module")
def two_stores(tmp_path_factory: pytest.TempPathFactory, eval_dir: Path, tiny_clip_spec: str, tiny_clip_encoder: Any,
               text_encoder: Any, ray_address: str) -> dict[str, Any]:
    """4 COCO photos, a 5-page PDF, a speech clip, two bad files and copies of a photo, the clip and a bad
    file, ingested on Ray and in process."""
    from indexers.av.transcribe import shared_transcriber
    from pipelines.engine import Engine
    from retriever.config import AudioConfig

    root = tmp_path_factory.mktemp("ray-same")
    corpus = root / "corpus"
    corpus.mkdir()
    photos = sorted((eval_dir / "images" / "coco").glob("*.jpg"))[:4]
    for src in [*photos, eval_dir / "pdf" / PDF, eval_dir / "audio" / AUDIO]:
        shutil.copy(src, corpus / src.name)
    (corpus / "broken.jpg").write_bytes(photos[0].read_bytes()[:3000])
    (corpus / "bad.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8)
    (corpus / "copies").mkdir()  # files with the bytes of others: copied, not decoded
    for name in (photos[1].name, AUDIO, "broken.jpg"):
        shutil.copy(corpus / name, corpus / "copies" / name)
    overrides = {"models.clip": tiny_clip_spec, "pdf.ocr": "off"}
    out: dict[str, Any] = {"corpus": corpus, "clip": tiny_clip_spec}
    for executor in ("ray", "local"):
        store = root / executor
        with Engine.open(store, overrides=overrides, clip=tiny_clip_encoder, text=text_encoder,
                         transcriber=shared_transcriber(AudioConfig(), "cpu")) as eng:
            out[executor] = eng.ingest([corpus], executor=executor)
            out[f"{executor}_verify"] = eng.verify()
            out[f"{executor}_failed"] = {s.uri: s.error for s in eng.store.catalog.sources(status="failed")}
        out[f"{executor}_store"] = store
    return out


def _items_in_order(store: Path, clip: str) -> dict[str, list[tuple[str, str, str | None]]]:
    """Source -> its items (kind, locator, text) in item id order."""
    from pipelines.testing.compare import open_store

    s = open_store(store, clip)
    try:
        uri_of = {src.id: src.uri for src in s.catalog.sources()}
        rows = sorted(row for batch in item_rows(s) for row in batch)
        out: dict[str, list[tuple[str, str, str | None]]] = {}
        for _iid, sid, kind, loc, text, _th, _pr in rows:
            out.setdefault(uri_of[sid], []).append((kind, json.dumps(loc, sort_keys=True), text))
        return out
    finally:
        s.close()


def test_ray_gives_the_same_items_and_vectors_as_in_process(two_stores: dict[str, Any]) -> None:
    ray_report, local_report = two_stores["ray"], two_stores["local"]
    assert (ray_report.added, ray_report.items) == (local_report.added, local_report.items) == (8, ray_report.items)
    assert ray_report.items >= 4 + 5 + 1 + 2
    on_ray, in_process = item_keys(two_stores["ray_store"], two_stores["clip"]), item_keys(
        two_stores["local_store"], two_stores["clip"])
    assert set(on_ray) == set(in_process)
    kinds = {key[1] for key in on_ray}
    assert {"photo", "page", "window"} <= kinds, kinds
    # same texts, and each source's items in the same order (items of a file may come back from the
    # encoder actors in any order; they are committed in the order the file gave them)
    ordered = _items_in_order(two_stores["ray_store"], two_stores["clip"])
    assert ordered == _items_in_order(two_stores["local_store"], two_stores["clip"])
    worst = 1.0
    for key, vectors in on_ray.items():
        assert set(vectors) == set(in_process[key]), key
        for space, vec in vectors.items():
            worst = min(worst, float(np.dot(vec, in_process[key][space])))
    assert worst > 0.995, worst  # bf16 on the CPU: batches of other sizes round differently
    assert two_stores["ray_verify"].clean and two_stores["local_verify"].clean
    corpus = two_stores["corpus"]
    for copied in (corpus / "copies").glob("*.*"):
        if copied.name == "broken.jpg":
            continue
        copy, original = _by_place(on_ray, copied), _by_place(on_ray, corpus / copied.name)
        assert copy and copy.keys() == original.keys(), copied.name  # a copy has its original's items
        assert all(np.array_equal(copy[place][space], original[place][space])
                   for place in copy for space in copy[place]), copied.name


def _by_place(keys: dict[Any, dict[str, np.ndarray]], path: Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """The items of ``path`` by (kind, locator without the file) -> vectors."""
    out = {}
    for (uri, kind, loc), vectors in keys.items():
        if uri == str(path):
            out[(kind, json.dumps({k: v for k, v in json.loads(loc).items() if k != "uri"}, sort_keys=True))] = vectors
    return out


def test_a_bad_file_is_recorded_as_failed_and_the_rest_commit(two_stores: dict[str, Any]) -> None:
    corpus = two_stores["corpus"]
    bad = {str(corpus / "broken.jpg"), str(corpus / "bad.pdf"), str(corpus / "copies" / "broken.jpg")}
    report = two_stores["ray"]
    assert {path for path, _ in report.failed} == bad and report.added == 8
    assert all(reason for _, reason in report.failed)
    assert set(two_stores["ray_failed"]) == bad
    assert two_stores["ray_failed"] == two_stores["local_failed"]  # the same reasons as in process


# ---- 2: kill -9 mid-way, rerun ---------------------------------------------------------------------
def test_a_killed_ray_ingest_leaves_a_consistent_store_and_a_rerun_finishes(
    tmp_path: Path, ray_address: str, scifact_texts: Any, text_files: Any, text_encoder: Any
) -> None:
    """The driver (a subprocess on this module's cluster) SIGKILLs itself right after its 3rd commit."""
    import ray

    from pipelines.engine import Engine

    corpus, store = tmp_path / "corpus", tmp_path / "store"
    files = text_files(corpus, scifact_texts(24, seed=11))
    sets = ["models.clip=none", "models.batch_size=4", "ingest.executor=ray", f"ingest.ray_address={ray_address}"]
    rc = crash.run_worker(store, corpus, sets, "committed:3", tmp_path / "commits.log", timeout=300)
    assert rc == -9
    committed = crash.read_log(tmp_path / "commits.log")
    assert len(committed) == 3
    check = crash.check_store(store, "none", committed)
    assert (check["lost"], check["duplicates"], check["mismatches"], check["verify_errors"]) == (0, 0, 0, [])
    deadline = time.monotonic() + 60  # the cluster let go of the dead job's actor
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2
    with Engine.open(store, overrides={"models.clip": "none", "models.batch_size": 4}, text=text_encoder) as eng:
        report = eng.ingest([corpus], executor="ray")
        assert (report.added, report.unchanged, report.failed) == (len(files) - 3, 3, [])
        assert eng.verify(check_files=True).clean
        assert eng.counts()["sources"] == len(files)
    check = crash.check_store(store, "none", committed)  # the 3 first commits kept their item ids
    assert (check["lost"], check["duplicates"], check["mismatches"], check["verify_errors"]) == (0, 0, 0, [])


# ---- 4: the command line -----------------------------------------------------------------------------
def test_cli_ingest_with_ray_starts_its_own_local_cluster(tmp_path: Path, scifact_texts: Any, text_files: Any) -> None:
    corpus, store = tmp_path / "corpus", tmp_path / "store"
    text_files(corpus, scifact_texts(3, seed=4))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "pipelines.cli", "ingest", str(corpus), "--store", str(store),
           "--clip-model", "none", "--json", "--ray"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert (report["added"], report["failed"]) == (3, [])
    verify = subprocess.run([sys.executable, "-m", "pipelines.cli", "verify", "--store", str(store), "--json"],
                            check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and json.loads(verify.stdout)["clean"], verify.stdout + verify.stderr
