"""Kill -9 torture of the ingest pipeline: nothing committed is lost, nothing is duplicated.

    python bench/crash_test.py [--rounds 20] [--texts 240] [--images 80] [--pdfs 4] [--clip tiny|none|SPEC]

Builds a mixed corpus (SciFact abstracts as text files, synthetic shape images as
PNG/JPEG, a few PDFs from the evaluation data), then runs ingests of it into one
store in a subprocess (``bench/_ingest_worker.py``) and SIGKILLs each at a random
moment: while encoding, inside a catalog transaction, right after a commit, in the
middle of a FAISS or BM25 save, before the log truncation, or after a random delay.
After every round the store is reopened and checked:

* lost: a source's items that the worker saw committed are no longer in the catalog;
* duplicates: two items of one source at the same address, or an id twice in an index;
* index mismatches: ids in an opened index (saved copy + replayed log) that differ
  from the catalog's vectors (per dense space) or texts (BM25); ``verify`` errors.

A round whose ingest finished rewrites a few text files so the next one has updates
to do. At the end a last ingest completes the store, and a clean ingest of the same
files into a fresh store must give the same items (by source and locator), the same
vectors and the same ranked search results for a set of text and image queries.
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORKER = Path(__file__).resolve().parent / "_ingest_worker.py"
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
    rounds: int = 0
    killed: int = 0
    completed: int = 0
    lost: int = 0
    duplicates: int = 0
    index_mismatches: int = 0
    verify_errors: int = 0
    points: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


# ---- corpus -------------------------------------------------------------------------
def scifact_docs(eval_dir: Path) -> list[dict[str, str]]:
    path = eval_dir / "retrieval" / "scifact_beir_subset" / "corpus.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_corpus(root: Path, eval_dir: Path, n_texts: int, n_images: int, n_pdfs: int, seed: int) -> list[str]:
    """Write the corpus under ``root``; returns text queries that hit it."""
    from PIL import Image

    from pipelines.synthetic import write_images

    rng = random.Random(seed)
    docs = scifact_docs(eval_dir)
    picked = rng.sample(docs, n_texts)
    (root / "texts").mkdir(parents=True)
    for i, doc in enumerate(picked):
        (root / "texts" / f"doc{i:04d}.txt").write_text(f"{doc['title']}\n\n{doc['text']}\n", encoding="utf-8")
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
        path.write_text(f"{doc['title']}\n\n{doc['text']}\n", encoding="utf-8")


# ---- running the worker ---------------------------------------------------------------
def settings(clip: str, save_every: int) -> list[str]:
    # fp32: on CPU "auto" picks bf16 where supported, whose results depend on how items were batched
    # (up to ~2e-3 per component); fp32 makes a re-encoded item identical to float16 rounding, so
    # the stores can be compared tightly
    return [f"models.clip={clip}", f"index.save_every_items={save_every}", "pdf.ocr=off", "ingest.workers=2",
            "models.batch_size=16", "models.precision=fp32"]


def run_worker(store: Path, corpus: Path, sets: list[str], kill: str | None, log: Path, timeout: float = 900) -> int:
    cmd = [sys.executable, str(WORKER), str(store), str(corpus), "--log", str(log)]
    cmd += [arg for s in sets for arg in ("--set", s)]
    if kill:
        cmd += ["--kill", kill]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
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


# ---- checks ---------------------------------------------------------------------------------
def open_store(store_dir: Path, clip: str) -> Any:
    from retriever.config import Config
    from retriever.store import Store

    config = Config.load(store_dir, {"models.clip": clip})
    return Store(store_dir, config, create=False)


def check_store(store_dir: Path, clip: str, committed: dict[str, list[int]]) -> dict[str, Any]:
    """Reopen the store like a reader and compare it with the commit log and the catalog."""
    import numpy as np

    from retriever.maintenance.verify import item_rows, verify

    store = open_store(store_dir, clip)
    try:
        by_source: dict[str, set[int]] = {s.uri: set() for s in store.catalog.sources()}
        uri_of = {s.id: s.uri for s in store.catalog.sources()}
        addresses: Counter = Counter()
        for rows in item_rows(store):
            for iid, sid, kind, loc, _text, _thumb, _prev in rows:
                by_source[uri_of[sid]].add(iid)
                addresses[(sid, kind, json.dumps(loc, sort_keys=True))] += 1
        lost = 0
        for uri, ids in committed.items():
            have = by_source.get(uri, set())
            superseded = bool(have) and min(have) > max(ids, default=-1)  # a later commit replaced them
            if not superseded:
                lost += len(set(ids) - have)
        duplicates = sum(n - 1 for n in addresses.values() if n > 1)
        mismatches = 0
        store.sync()
        for name in store.spaces():
            got = store.space(name).index.ids()
            duplicates += len(got) - len(np.unique(got))
            mismatches += len(set(got.tolist()) ^ set(store.catalog.item_ids(name).tolist()))
        bm25 = store.bm25().index._ids
        texts = {i for batch in store.catalog.iter_texts() for i, _ in batch}
        duplicates += len(bm25) - len(np.unique(bm25))
        mismatches += len(set(bm25.tolist()) ^ texts)
        report = verify(store, check_files=False)
        errors = [p.to_dict() for p in report.problems if p.severity == "error"]
        return {"lost": lost, "duplicates": duplicates, "mismatches": mismatches, "verify_errors": errors,
                "items": sum(len(v) for v in by_source.values())}
    finally:
        store.close()


def item_keys(store_dir: Path, clip: str) -> dict[tuple, dict[str, Any]]:
    """(source, kind, locator) -> {space: vector} for comparing two stores."""
    import numpy as np

    from retriever.maintenance.verify import item_rows

    store = open_store(store_dir, clip)
    try:
        uri_of = {s.id: s.uri for s in store.catalog.sources()}
        keys = {}
        for rows in item_rows(store):
            for iid, sid, kind, loc, _t, _th, _pr in rows:
                keys[iid] = (uri_of[sid], kind, json.dumps(loc, sort_keys=True))
        out: dict[tuple, dict[str, Any]] = {key: {} for key in keys.values()}
        for name in store.spaces():
            ids, vecs = store.catalog.vectors(name, list(keys))
            for iid, vec in zip(ids.tolist(), vecs):
                out[keys[iid]][name] = vec / (np.linalg.norm(vec) or 1.0)
        return out
    finally:
        store.close()


def compare_stores(
    crash: Path, clean: Path, clip: str, queries: list[str], image_queries: list[Path],
    opener: Callable[[Path, dict[str, str]], Any] | None = None,
) -> dict:
    """Items, vectors and search results of two stores built from the same files.

    Every space is searched to full depth: both stores must return the same items
    (by source and locator) with the same scores (1e-4; the workers encode in fp32, so
    a re-encoded item differs by float16 rounding at most). The fused top-10 lists
    must then be identical, except where items with exactly equal scores in a space
    (e.g. two chunks with the same BM25 score) trade places: the order of tied items
    is arbitrary, and item ids (the engine's tie-break) differ between the stores.
    Such a query counts as a ``tie_reorder`` only if fusing each store's runs with
    ties broken by (source, locator) gives identical top 10s (``same_top_set``: the
    reordered lists still hold the same items); anything else is a mismatch.
    ``--baseline`` measures the same between two clean ingests.
    """
    from pipelines.engine import Engine

    a, b = item_keys(crash, clip), item_keys(clean, clip)
    drift = sum(
        1 for key in set(a) & set(b) for space in set(a[key]) | set(b[key])
        if space not in a[key] or space not in b[key] or float(a[key][space] @ b[key][space]) < 0.9999
    )
    result: dict[str, Any] = {
        "items_only_in_crash": len(set(a) - set(b)), "items_only_in_clean": len(set(b) - set(a)),
        "vector_drift": drift, "queries": 0, "space_mismatches": 0, "search_mismatches": 0, "tie_reorders": 0,
        "same_top_set": 0, "examples": [],
    }
    overrides = {"models.clip": clip, "models.precision": "fp32"}
    opener = opener or (lambda store, ov: Engine.open(store, overrides=ov))
    with opener(crash, overrides) as ea, opener(clean, overrides) as eb:
        ea._text = eb._text = _Memo(ea.text_encoder)  # one model for both stores, each query encoded once
        ea._clip = eb._clip = _Memo(ea.clip_encoder) if ea.clip_encoder is not None else None
        eb._clip_built = True
        asks = [{"text": q} for q in queries]
        asks += [{"image": str(p)} for p in image_queries] if ea.clip_encoder is not None else []
        for ask in asks:
            result["queries"] += 1
            runs_a, runs_b = space_runs(ea, ask), space_runs(eb, ask)
            bad_spaces = _space_differences(runs_a, runs_b)
            result["space_mismatches"] += bool(bad_spaces)
            ra, rb = ranked(ea.search(k=10, **ask)), ranked(eb.search(k=10, **ask))
            if ra == rb and not bad_spaces:
                continue
            cfg = ea.config.search
            if not bad_spaces and canonical_top(runs_a, 10, cfg) == canonical_top(runs_b, 10, cfg):
                result["tie_reorders"] += 1
                result["same_top_set"] += set(ra) == set(rb)
            else:
                result["search_mismatches"] += 1
            result["examples"].append({"query": ask, "spaces": bad_spaces, "crash": ra[:5], "clean": rb[:5]})
    return result


class _Memo:
    """An encoder that remembers the texts it encoded (queries repeat across stores and runs)."""

    def __init__(self, encoder: Any) -> None:
        self._encoder, self._texts = encoder, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_texts(self, texts: Any) -> Any:
        key = tuple(texts)
        if key not in self._texts:
            self._texts[key] = self._encoder.encode_texts(texts)
        return self._texts[key]


def space_runs(eng: Any, ask: dict[str, str]) -> dict[str, dict[tuple, float]]:
    """Every item of every space the query reaches, with its score (full depth)."""
    import numpy as np

    from pipelines.engine import load_query_image
    from retriever.search import RUN_SPACES

    store = eng.store
    store.sync()
    vecs: dict[str, tuple[tuple[str, ...], Any]] = {}
    if "text" in ask:
        vecs["text"] = (("text",), eng.text_encoder.encode_texts([ask["text"]]))
        if eng.clip_encoder is not None:
            vecs["clip_text"] = (RUN_SPACES["clip_text"], eng.clip_encoder.encode_texts([ask["text"]]))
    if "image" in ask:
        image = load_query_image(ask["image"])
        vecs["clip_image"] = (RUN_SPACES["clip_image"], eng.clip_encoder.encode_images([image]))
    runs: dict[str, tuple[Any, Any]] = {}
    for run, (space_names, vec) in vecs.items():
        ids, scores = [], []
        for name in space_names:
            space = store.space(name)
            if space is None or not len(space):
                continue
            s, i = space.search(vec, len(space))
            ids += list(i[0])
            scores += list(s[0])
        runs[run] = (np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32))
    if "text" in ask:
        scores, ids = store.bm25().search(ask["text"], max(1, len(store.bm25())))
        runs["bm25"] = (ids, scores)
    keys = _keys_of(store, {int(i) for ids, _ in runs.values() for i in ids if i >= 0})
    return {run: {keys[int(i)]: float(s) for i, s in zip(ids, scores) if i >= 0} for run, (ids, scores) in runs.items()}


def _keys_of(store: Any, ids: set[int]) -> dict[int, tuple]:
    recs = store.catalog.items(sorted(ids))
    return {i: (r.source_uri, r.kind, json.dumps(r.locator.to_dict(), sort_keys=True)) for i, r in recs.items()}


def canonical_top(runs: dict[str, dict[tuple, float]], k: int, cfg: Any) -> list[tuple]:
    """Reciprocal rank fusion as the engine does it, with ties broken by (source, locator)."""
    fused: dict[tuple, float] = {}
    for run, scores in runs.items():
        order = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[: max(cfg.depth, k)]
        for rank, (key, _) in enumerate(order, start=1):
            fused[key] = fused.get(key, 0.0) + cfg.weight(run) / (cfg.rrf_k + rank)
    return [key for key, _ in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def _space_differences(x: dict[str, dict[tuple, float]], y: dict[str, dict[tuple, float]], tol: float = 1e-4) -> list:
    out = []
    for run in sorted(set(x) | set(y)):
        rx, ry = x.get(run, {}), y.get(run, {})
        if set(rx) != set(ry):
            out.append({"run": run, "only_crash": len(set(rx) - set(ry)), "only_clean": len(set(ry) - set(rx))})
            continue
        off = [k for k in rx if abs(rx[k] - ry[k]) > tol * max(1.0, abs(ry[k]))]
        if off:
            out.append({"run": run, "score_differs": len(off), "example": list(off[0])})
    return out


def ranked(hits: list[Any]) -> list[tuple]:
    return [(h.source_uri, h.kind, json.dumps(h.locator.to_dict(), sort_keys=True)) for h in hits]


# ---- the torture ---------------------------------------------------------------------------
def torture(
    work: Path, eval_dir: Path, rounds: int = 20, n_texts: int = 240, n_images: int = 80, n_pdfs: int = 4,
    clip: str = "none", seed: int = 0, save_every: int = 25, kills: list[str] | None = None,
    log: Callable[[str], None] = print, ingest: Callable[[Path, Path, dict[str, str]], None] | None = None,
    opener: Callable[[Path, dict[str, str]], Any] | None = None, baseline: bool = False,
) -> dict[str, Any]:
    """Run the rounds; returns the tally and the comparison with a clean ingest.

    ``ingest(store, corpus, overrides)``, if given, runs the two ingests that are not
    killed (the last one and the clean one) in this process instead of a worker;
    ``opener(store, overrides)`` opens the engines that compare the two stores.
    """
    rng = random.Random(seed)
    corpus, store, clean = work / "corpus", work / "store", work / "clean"
    commit_log = work / "commits.log"
    queries = build_corpus(corpus, eval_dir, n_texts, n_images, n_pdfs, seed)
    image_queries = sorted((corpus / "images").glob("*"))[:3]
    sets = settings(clip, save_every)
    tally = Tally()
    plan = kills or kill_plan(rng, rounds)
    for r in range(rounds):
        kill = plan[r % len(plan)]
        t0 = time.perf_counter()
        rc = run_worker(store, corpus, sets, kill, commit_log)
        tally.rounds += 1
        tally.points[kill.split(":")[0]] += rc == -9
        tally.killed += rc == -9
        tally.completed += rc == 0
        check = _tally_check(tally, check_store(store, clip, read_log(commit_log)))
        log(f"round {r + 1:>2}: kill {kill:<16} -> {'killed' if rc == -9 else 'finished':<8} "
            f"{time.perf_counter() - t0:5.1f} s, {check['items']} items, lost {check['lost']}, "
            f"dup {check['duplicates']}, mismatches {check['mismatches']}, verify errors {len(check['verify_errors'])}")
        if rc == 0 or kill.split(":")[0] in {p for p, _, _ in END_OF_RUN}:
            mutate(corpus, eval_dir, rng, max(1, n_texts // 10))  # everything is committed: give the next round work
    targets = [(store, commit_log), (clean, work / "clean.log")]
    targets += [(work / "clean2", work / "clean2.log")] if baseline else []
    for target, log_path in targets:
        if ingest is not None:
            ingest(target, corpus, dict(s.split("=", 1) for s in sets))
        elif run_worker(target, corpus, sets, None, log_path) != 0:
            raise RuntimeError(f"the ingest into {target} did not finish")
        if target == store:
            final = _tally_check(tally, check_store(store, clip, read_log(commit_log)))
    comparison = compare_stores(store, clean, clip, queries, image_queries, opener)
    if baseline:
        base = compare_stores(clean, work / "clean2", clip, queries, image_queries, opener)
        comparison["baseline"] = {k: v for k, v in base.items() if k != "examples"}
    summary = {
        "rounds": tally.rounds, "killed": tally.killed, "completed": tally.completed,
        "kills_by_point": dict(tally.points), "items": final["items"], "items_lost": tally.lost,
        "duplicates": tally.duplicates, "index_mismatches": tally.index_mismatches,
        "verify_errors": tally.verify_errors, **comparison, "notes": tally.notes,
    }
    return summary


def kill_plan(rng: random.Random, rounds: int) -> list[str]:
    """Every point at least once (when there are enough rounds), end-of-run ones in the later half."""
    points = list(MID_RUN) * max(1, rounds // 8)
    points = (points + [rng.choice(MID_RUN) for _ in range(rounds)])[: max(0, rounds - len(END_OF_RUN))]
    rng.shuffle(points)
    late = sorted(rng.sample(range(rounds // 2, rounds), min(len(END_OF_RUN), rounds - rounds // 2)))
    for pos, point in zip(late, END_OF_RUN):
        points.insert(pos, point)
    return [f"{p}:{rng.randint(lo, hi)}" for p, lo, hi in points[:rounds]]


def _tally_check(tally: Tally, check: dict[str, Any]) -> dict[str, Any]:
    tally.lost += check["lost"]
    tally.duplicates += check["duplicates"]
    tally.index_mismatches += check["mismatches"]
    tally.verify_errors += len(check["verify_errors"])
    tally.notes += [json.dumps(e) for e in check["verify_errors"]]
    return check


def main(argv: list[str] | None = None) -> int:
    from retriever.config import eval_data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--texts", type=int, default=240)
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--pdfs", type=int, default=4)
    ap.add_argument("--clip", default="tiny", help="tiny (the test CLIP, trained and cached), none, or a spec")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=25, help="index.save_every_items (small: many saves)")
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir, removed at the end)")
    ap.add_argument("--baseline", action="store_true", help="also compare two clean ingests (numerical noise)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    clip = args.clip
    if clip == "tiny":
        from pipelines.synthetic import ensure_tiny_clip

        clip = ensure_tiny_clip(REPO / ".mmrag-cache" / "tiny-clip")
    import tempfile

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mmrag-crash-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"work directory {work} is not empty")
    t0 = time.perf_counter()
    try:
        summary = torture(work, eval_data_dir(), args.rounds, args.texts, args.images, args.pdfs, clip, args.seed,
                          args.save_every, log=lambda m: print(m, file=sys.stderr, flush=True),
                          baseline=args.baseline)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for key in ("rounds", "killed", "completed", "kills_by_point", "items", "items_lost", "duplicates",
                    "index_mismatches", "verify_errors", "items_only_in_crash", "items_only_in_clean", "vector_drift",
                    "queries", "space_mismatches", "search_mismatches", "tie_reorders", "same_top_set", "seconds"):
            print(f"{key:<20} {summary[key]}")
        if "baseline" in summary:
            print(f"{'baseline (clean vs clean)':<20} {json.dumps(summary['baseline'])}")
        for ex in summary["examples"][:3]:
            print("mismatch:", json.dumps(ex)[:600])
    bad = summary["items_lost"] or summary["duplicates"] or summary["index_mismatches"] or summary["verify_errors"]
    bad = bad or summary["items_only_in_crash"] or summary["items_only_in_clean"] or summary["search_mismatches"]
    bad = bad or summary["space_mismatches"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
