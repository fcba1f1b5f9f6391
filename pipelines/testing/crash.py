"""Kill -9 torture of the ingest pipeline: nothing committed is lost, nothing is duplicated.

Builds a mixed corpus (SciFact abstracts as text files, synthetic shape images as
PNG/JPEG, a few PDFs from the evaluation data), then runs ingests of it into one
store in a subprocess (``python -m pipelines.testing.ingest_worker``) and SIGKILLs
each at a chosen moment: while encoding, inside a catalog transaction, right after a
commit, in the middle of a FAISS or BM25 save, before the log truncation, or after a
delay. After every round the store is reopened and checked (``check_store``):

* lost: a source's items that the worker saw committed are no longer in the catalog;
* duplicates: two items of one source at the same address, or an id twice in an index;
* index mismatches: ids in an opened index (saved copy + replayed log) that differ
  from the catalog's vectors (per dense space) or texts (BM25); ``verify`` errors.

A round whose ingest finished rewrites a few text files so the next one has updates
to do. At the end a last ingest completes the store, and a clean ingest of the same
files into a fresh store must give the same items, vectors and ranked search results
(``pipelines.testing.compare``). ``bench/crash_test.py`` is the command line over this.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines.testing.compare import Models, compare_stores, load_models, open_store

__all__ = [
    "END_OF_RUN",
    "MID_RUN",
    "PDFS",
    "Models",
    "Tally",
    "build_corpus",
    "check_store",
    "doc_text",
    "ingest_in_process",
    "kill_plan",
    "load_models",
    "mutate",
    "read_log",
    "run_worker",
    "scifact_docs",
    "settings",
    "torture",
]

_PACKAGES_ROOT = Path(__file__).resolve().parents[2]  # holds pipelines/, indexers/, retriever/
PDFS = (
    "pypdf__crazyones.pdf",
    "pdfplumber__scotus-transcript-p1.pdf",
    "docling__2305.03393v1-pg9.pdf",
    "docling__multi_page.pdf",
    "unstructured__layout-parser-paper-fast.pdf",
)
# (point, lowest N, highest N): where and when a round's worker kills itself. The first ones
# strike in the middle of a run; save_bm25 and truncate only at its end (after every commit).
MID_RUN = (
    ("encode", 1, 12),
    ("in_commit", 1, 40),
    ("committed", 1, 40),
    ("save_index", 1, 6),
    ("save_partial", 1, 3),
    ("delay", 300, 20_000),
)
END_OF_RUN = (("save_bm25", 1, 2), ("truncate", 1, 1))


@dataclass
class Tally:
    """What the rounds found, summed."""

    rounds: int = 0
    killed: int = 0
    completed: int = 0
    lost: int = 0
    duplicates: int = 0
    index_mismatches: int = 0
    verify_errors: int = 0
    points: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, check: dict[str, Any]) -> dict[str, Any]:
        """Count one ``check_store`` result; returns it."""
        self.lost += check["lost"]
        self.duplicates += check["duplicates"]
        self.index_mismatches += check["mismatches"]
        self.verify_errors += len(check["verify_errors"])
        self.notes += [json.dumps(e) for e in check["verify_errors"]]
        return check


# ---- corpus -------------------------------------------------------------------------
def scifact_docs(eval_dir: Path) -> list[dict[str, str]]:
    """The SciFact abstracts of the evaluation data (``_id``, ``title``, ``text``), in file order."""
    path = eval_dir / "retrieval" / "scifact_beir_subset" / "corpus.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def doc_text(doc: dict[str, str]) -> str:
    """An abstract as the text file the corpora hold: title, blank line, text."""
    return f"{doc['title']}\n\n{doc['text']}\n"


def build_corpus(
    root: Path, eval_dir: Path, n_texts: int, n_images: int, n_pdfs: int, seed: int
) -> list[str]:
    """Write the corpus under ``root``; returns text queries that hit it."""
    from PIL import Image

    from pipelines.synthetic import write_images

    rng = random.Random(seed)
    picked = rng.sample(scifact_docs(eval_dir), n_texts)
    (root / "texts").mkdir(parents=True)
    for i, doc in enumerate(picked):
        (root / "texts" / f"doc{i:04d}.txt").write_text(doc_text(doc), encoding="utf-8")
    for i, path in enumerate(write_images(root / "images", n_images, seed=seed, size=96)):
        if i % 2:  # half of them as JPEG
            Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), quality=90)
            path.unlink()
    (root / "pdfs").mkdir()
    for name in PDFS[:n_pdfs]:
        shutil.copy(eval_dir / "pdf" / name, root / "pdfs" / name)
    queries = [doc["title"] for doc in rng.sample(picked, min(12, len(picked)))]
    return queries + ["a red circle", "a blue square", "a large green triangle", "a yellow star at the top",
                      "word processors and typewriters", "the misfits and the rebels"]


def mutate(root: Path, eval_dir: Path, rng: random.Random, n: int) -> None:
    """Rewrite ``n`` text files with abstracts not in the corpus yet (the next ingest replaces their items).

    Never a copy of another file: two identical chunks tie in every space, and the order
    of tied items is arbitrary, which would blur the comparison with a clean ingest.
    """
    files = sorted((root / "texts").glob("*.txt"))
    used = {path.read_text(encoding="utf-8").split("\n", 1)[0] for path in files}
    fresh = [d for d in scifact_docs(eval_dir) if d["title"] not in used]
    for path, doc in zip(rng.sample(files, n), rng.sample(fresh, n)):
        path.write_text(doc_text(doc), encoding="utf-8")


def kill_plan(rng: random.Random, rounds: int) -> list[str]:
    """``POINT:N`` per round: every point at least once (when there are enough rounds), end-of-run ones
    in the later half."""
    points = list(MID_RUN) * max(1, rounds // 8)
    points = (points + [rng.choice(MID_RUN) for _ in range(rounds)])[: max(0, rounds - len(END_OF_RUN))]
    rng.shuffle(points)
    late = sorted(rng.sample(range(rounds // 2, rounds), min(len(END_OF_RUN), rounds - rounds // 2)))
    for pos, point in zip(late, END_OF_RUN):
        points.insert(pos, point)
    return [f"{p}:{rng.randint(lo, hi)}" for p, lo, hi in points[:rounds]]


# ---- running the worker ---------------------------------------------------------------
def settings(clip: str, save_every: int) -> list[str]:
    """The ``KEY=VALUE`` settings of every ingest of a torture."""
    # fp32: on CPU "auto" picks bf16 where supported, whose results depend on how items were batched
    # (up to ~2e-3 per component); fp32 makes a re-encoded item identical to float16 rounding, so
    # the stores can be compared tightly
    return [f"models.clip={clip}", f"index.save_every_items={save_every}", "pdf.ocr=off", "ingest.workers=2",
            "models.batch_size=16", "models.precision=fp32"]


def run_worker(
    store: Path, corpus: Path, sets: list[str], kill: str | None, log: Path, timeout: float = 900
) -> int:
    """One ingest in a worker process; its exit code (0, or -9 when the fault point killed it)."""
    cmd = [sys.executable, "-m", "pipelines.testing.ingest_worker", str(store), str(corpus)]
    cmd += ["--log", str(log)] + [arg for s in sets for arg in ("--set", s)]
    if kill:
        cmd += ["--kill", kill]
    env = {**os.environ, "PYTHONPATH": str(_PACKAGES_ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=_PACKAGES_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode not in (0, -9):
        raise RuntimeError(f"ingest worker failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.returncode


def read_log(log: Path) -> dict[str, list[int]]:
    """uri -> item ids of the last commit the worker saw for it."""
    out: dict[str, list[int]] = {}
    if log.exists():
        for line in log.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
            uri, _, ids = line.partition("\t")
            out[uri] = [int(i) for i in ids.split(",") if i]
    return out


def ingest_in_process(store: Path, corpus: Path, sets: list[str], models: Models) -> None:
    """One ingest in this process with already loaded models (they must match ``sets``)."""
    from pipelines.engine import Engine

    overrides = dict(s.split("=", 1) for s in sets)
    with Engine.open(store, overrides=overrides, text=models.text, clip=models.clip) as eng:
        eng.ingest([corpus])


# ---- checks ---------------------------------------------------------------------------------
def check_store(store_dir: Path, clip: str, committed: dict[str, list[int]]) -> dict[str, Any]:
    """Reopen the store like a reader and compare it with the commit log and the catalog."""
    from retriever.maintenance.verify import verify

    store = open_store(store_dir, clip)
    try:
        by_source, duplicates = _items_by_source(store)
        lost = sum(_lost(ids, by_source.get(uri, set())) for uri, ids in committed.items())
        index_duplicates, mismatches = _index_differences(store)
        report = verify(store, check_files=False)
        errors = [p.to_dict() for p in report.problems if p.severity == "error"]
        return {"lost": lost, "duplicates": duplicates + index_duplicates, "mismatches": mismatches,
                "verify_errors": errors, "items": sum(len(v) for v in by_source.values())}
    finally:
        store.close()


def _lost(ids: list[int], have: set[int]) -> int:
    """How many of a source's committed ``ids`` are missing, unless a later commit replaced them."""
    superseded = bool(have) and min(have) > max(ids, default=-1)
    return 0 if superseded else len(set(ids) - have)


def _items_by_source(store: Any) -> tuple[dict[str, set[int]], int]:
    """uri -> item ids, and how many items share an address (source, kind, locator) with another."""
    from retriever.maintenance.verify import item_rows

    by_source: dict[str, set[int]] = {s.uri: set() for s in store.catalog.sources()}
    uri_of = {s.id: s.uri for s in store.catalog.sources()}
    addresses: Counter[tuple[int, str, str]] = Counter()
    for rows in item_rows(store):
        for iid, sid, kind, loc, _text, _thumb, _prev in rows:
            by_source[uri_of[sid]].add(iid)
            addresses[(sid, kind, json.dumps(loc, sort_keys=True))] += 1
    return by_source, sum(n - 1 for n in addresses.values() if n > 1)


def _index_differences(store: Any) -> tuple[int, int]:
    """(ids held twice by an index, ids an index and the catalog disagree on), over every space and BM25."""
    import numpy as np

    duplicates = mismatches = 0
    store.sync()
    for name in store.spaces():
        got = store.space(name).index.ids()
        duplicates += len(got) - len(np.unique(got))
        mismatches += len(set(got.tolist()) ^ set(store.catalog.item_ids(name).tolist()))
    bm25 = store.bm25().index.ids()
    texts = {i for batch in store.catalog.iter_texts() for i, _ in batch}
    duplicates += len(bm25) - len(np.unique(bm25))
    mismatches += len(set(bm25.tolist()) ^ texts)
    return duplicates, mismatches


# ---- the torture ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Work:
    """The files of one torture under its work directory."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def commits(self) -> Path:
        return self.root / "commits.log"

    @property
    def clean(self) -> Path:
        return self.root / "clean"

    @property
    def clean2(self) -> Path:
        return self.root / "clean2"


def torture(
    work: Path, eval_dir: Path, rounds: int = 20, n_texts: int = 240, n_images: int = 80, n_pdfs: int = 4,
    clip: str = "none", seed: int = 0, save_every: int = 25, kills: list[str] | None = None,
    log: Callable[[str], None] = print, models: Models | None = None, in_process: bool = False,
    baseline: bool = False,
) -> dict[str, Any]:
    """Run the rounds; returns the tally and the comparison with a clean ingest.

    ``kills`` is the ``POINT:N`` of each round (default: a random ``kill_plan``). ``models``
    are loaded encoders (built with ``settings``: fp32) that the comparison, and with
    ``in_process`` the two ingests that are not killed (the last one and the clean one),
    use instead of loading their own; ``in_process`` runs those ingests in this process.
    ``baseline`` also compares two clean ingests (the numerical noise floor).
    """
    rng = random.Random(seed)
    paths = _Work(work)
    queries = build_corpus(paths.corpus, eval_dir, n_texts, n_images, n_pdfs, seed)
    image_queries = sorted((paths.corpus / "images").glob("*"))[:3]
    sets = settings(clip, save_every)
    tally = Tally()
    plan = kills or kill_plan(rng, rounds)
    for r in range(rounds):
        if _kill_round(r, plan[r % len(plan)], paths, clip, sets, tally, log):
            # everything is committed: give the next round work
            mutate(paths.corpus, eval_dir, rng, max(1, n_texts // 10))
    if in_process:
        models = models or load_models(clip)
    final = _final_ingests(paths, sets, models if in_process else None, baseline, clip, tally)
    comparison = compare_stores(paths.store, paths.clean, clip, queries, image_queries, models)
    if baseline:
        base = compare_stores(paths.clean, paths.clean2, clip, queries, image_queries, models)
        comparison["baseline"] = {k: v for k, v in base.items() if k != "examples"}
    return {
        "rounds": tally.rounds, "killed": tally.killed, "completed": tally.completed,
        "kills_by_point": dict(tally.points), "items": final["items"], "items_lost": tally.lost,
        "duplicates": tally.duplicates, "index_mismatches": tally.index_mismatches,
        "verify_errors": tally.verify_errors, **comparison, "notes": tally.notes,
    }


def _kill_round(
    r: int, kill: str, paths: _Work, clip: str, sets: list[str], tally: Tally, log: Callable[[str], None]
) -> bool:
    """One killed (or, when the point is never reached, finished) ingest and its check; True when
    everything is committed afterwards (the run finished, or died only in its end-of-run saves)."""
    t0 = time.perf_counter()
    rc = run_worker(paths.store, paths.corpus, sets, kill, paths.commits)
    point = kill.split(":")[0]
    tally.rounds += 1
    tally.points[point] += rc == -9
    tally.killed += rc == -9
    tally.completed += rc == 0
    check = tally.add(check_store(paths.store, clip, read_log(paths.commits)))
    log(f"round {r + 1:>2}: kill {kill:<16} -> {'killed' if rc == -9 else 'finished':<8} "
        f"{time.perf_counter() - t0:5.1f} s, {check['items']} items, lost {check['lost']}, "
        f"dup {check['duplicates']}, mismatches {check['mismatches']}, "
        f"verify errors {len(check['verify_errors'])}")
    return rc == 0 or point in {p for p, _, _ in END_OF_RUN}


def _final_ingests(
    paths: _Work, sets: list[str], models: Models | None, baseline: bool, clip: str, tally: Tally
) -> dict[str, Any]:
    """Complete the store, check it, then ingest the same files into a clean store (two with
    ``baseline``); in this process with ``models``, else in workers. The store's last check."""
    targets = [paths.store, paths.clean] + ([paths.clean2] if baseline else [])
    final: dict[str, Any] = {}
    for target in targets:
        if models is not None:
            ingest_in_process(target, paths.corpus, sets, models)
        else:
            log = paths.commits if target == paths.store else target.with_suffix(".log")
            if run_worker(target, paths.corpus, sets, None, log) != 0:
                raise RuntimeError(f"the ingest into {target} did not finish")
        if target == paths.store:
            final = tally.add(check_store(paths.store, clip, read_log(paths.commits)))
    return final
