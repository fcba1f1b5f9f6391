"""FAISS in-process against Milvus (a local standalone server) on the same vectors, through mmrag's
own index classes (``FaissIndex`` and ``MilvusIndex``, as ``DenseSpace`` drives them).

Data: ``--n`` 512-d unit vectors on a low-rank subspace (rank ``--rank`` plus a little noise),
like real embeddings (uniform random vectors defeat every ANN index), rounded to float16 as
the catalog stores them; ``--queries`` held-out queries from the same distribution; the exact
top-10 by brute force is the truth. Both indexes are HNSW with the store's settings
(``index.hnsw_m``, ``index.hnsw_ef_construction``), swept over ef. Printed per backend: insert
rate, build time (insert + index build until searchable), single-query p50/p99 (one query per
call, one client thread), batched QPS (all queries in one call) and recall@10 per ef; then the
two side by side at the smallest ef each needs for recall@10 >= ``--target``, with ratios.

The Milvus server runs in a network namespace of its own and is reached through a relay in
this process (``pipelines.testing.milvus_server``): every Milvus call pays a loopback hop more
than a direct connection would. ``--milvus-uri`` uses a server you started instead.

    python bench/milvus.py                 # 200k vectors (~5 min on 2 busy cores)
    python bench/milvus.py --n 50000       # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# this file's name is the Milvus server package's: import that one, not this script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retriever.config import IndexConfig  # noqa: E402
from retriever.index.base import IndexTarget  # noqa: E402
from retriever.index.faiss_index import FaissIndex  # noqa: E402

EFS = (16, 32, 64, 128, 256)


def low_rank(n: int, dim: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dim)).astype(np.float32)
    x = rng.standard_normal((n, rank)).astype(np.float32) @ basis
    x += 0.05 * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(dim) * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


def truth(base: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    out = []
    for start in range(0, len(queries), 64):
        scores = queries[start:start + 64] @ base.T
        out.append(np.argsort(-scores, axis=1)[:, :k])
    return np.vstack(out)


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g[:10].tolist()) & set(w.tolist())) / 10 for g, w in zip(got, want)]))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sweep(index: object, set_ef: object, queries: np.ndarray, want: np.ndarray,
          threads: object = None) -> list[dict[str, float]]:
    """Per ef: single queries on one client thread, then all queries in one call (``threads(n)``
    sets an in-process library's threads: 1 for single queries, every core for the batch)."""
    rows = []
    for ef in EFS:
        set_ef(ef)  # type: ignore[operator]
        if threads is not None:
            threads(1)  # type: ignore[operator]
        lat = []
        got = []
        for q in queries:
            t0 = time.perf_counter()
            _, ids = index.search(q[None, :], 10)  # type: ignore[attr-defined]
            lat.append(time.perf_counter() - t0)
            got.append(ids[0])
        if threads is not None:
            threads(os.cpu_count() or 1)  # type: ignore[operator]
        t0 = time.perf_counter()
        index.search(queries, 10)  # type: ignore[attr-defined]
        batch = time.perf_counter() - t0
        rows.append({"ef": ef, "recall": recall(np.asarray(got), want), "p50_ms": 1e3 * float(np.percentile(lat, 50)),
                     "p99_ms": 1e3 * float(np.percentile(lat, 99)), "qps": len(queries) / batch})
    return rows


def run_faiss(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, want: np.ndarray, cfg: IndexConfig) -> dict:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the build uses every core, as Milvus's does
    t0, c0 = time.perf_counter(), cpu()
    index = FaissIndex(base.shape[1], cfg, kind="hnsw", n_hint=len(base))
    for start in range(0, len(base), 10_000):
        index.add(ids[start:start + 10_000], base[start:start + 10_000])
    build, build_cpu = time.perf_counter() - t0, cpu() - c0

    def set_ef(ef: int) -> None:
        index.set_search_params(ef_search=ef)

    rows = sweep(index, set_ef, queries, want, threads=faiss.omp_set_num_threads)
    return {"name": "faiss (in-process)", "insert_rows_s": len(base) / build, "build_s": build,
            "build_cpu_s": build_cpu, "sweep": rows}


def run_milvus(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, want: np.ndarray, cfg: IndexConfig,
               uri: str) -> dict:
    from retriever.index.milvus_index import MilvusBackend

    mcfg = IndexConfig(backend="milvus", milvus_uri=uri, milvus_index="HNSW", hnsw_m=cfg.hnsw_m,
                       hnsw_ef_construction=cfg.hnsw_ef_construction, milvus_consistency="Bounded")
    target = IndexTarget("bench", base.shape[1], Path(tempfile.mkdtemp()), mcfg, store_id="bench0000")
    backend = MilvusBackend(mcfg)
    t0 = time.perf_counter()
    index = backend.create(target, n_hint=len(base))
    for start in range(0, len(base), 10_000):
        index.add(ids[start:start + 10_000], base[start:start + 10_000])
    inserted = time.perf_counter() - t0
    index.persist(1)  # flush: sealed segments get their HNSW built
    client = index._c
    client.call("wait for the index", "load_collection", index.collection)
    while True:
        info = client.call("describe index", "describe_index", index.collection, "vector")
        if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= len(base):
            break
        time.sleep(1)
    build = time.perf_counter() - t0
    def set_ef(ef: int) -> None:
        index.cfg = dataclasses.replace(mcfg, hnsw_ef_search=ef)

    rows = sweep(index, set_ef, queries, want)
    backend.discard(target)
    return {"name": "milvus 2.3.5 (server)", "insert_rows_s": len(base) / inserted, "build_s": build,
            "build_cpu_s": float("nan"), "sweep": rows}


def at_target(result: dict, target: float) -> dict | None:
    return next((r for r in result["sweep"] if r["recall"] >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rank", type=int, default=48)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--milvus-uri", default="")
    args = ap.parse_args()
    cfg = IndexConfig()
    base = low_rank(args.n, 512, args.rank, seed=1)
    # held-out queries on the base's subspace
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((args.rank, 512)).astype(np.float32)
    q = np.random.default_rng(7).standard_normal((args.queries, args.rank)).astype(np.float32) @ basis
    queries = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    want = truth(base, queries) + 1
    print(f"{args.n} x 512 vectors (rank {args.rank}), {args.queries} queries, HNSW M={cfg.hnsw_m} "
          f"efConstruction={cfg.hnsw_ef_construction}; cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    faiss_result = run_faiss(base, ids, queries, want, cfg)
    print(f"faiss done in {faiss_result['build_s']:.0f} s build", flush=True)
    server = None
    uri = args.milvus_uri
    if not uri:
        from pipelines.testing.milvus_server import MilvusProcess

        cache = Path(os.environ.get("MMRAG_TEST_CACHE", Path(__file__).resolve().parents[1] / ".mmrag-cache"))
        server = MilvusProcess(Path(tempfile.mkdtemp(prefix="mmrag-milvus-bench-")), bin_cache=cache / "milvus-bin")
        uri = server.start().uri
    try:
        milvus_result = run_milvus(base, ids, queries, want, cfg, uri)
    finally:
        if server is not None:
            server.stop()
    for res in (faiss_result, milvus_result):
        print(f"\n{res['name']}: insert {res['insert_rows_s']:,.0f} rows/s, build (until searchable) "
              f"{res['build_s']:.1f} s")
        print("   ef  recall@10  p50 ms  p99 ms  batch QPS")
        for r in res["sweep"]:
            print(f"  {r['ef']:>3}  {r['recall']:.3f}     {r['p50_ms']:6.2f}  {r['p99_ms']:6.2f}  {r['qps']:8.0f}")
    f, m = at_target(faiss_result, args.target), at_target(milvus_result, args.target)
    print(f"\nat recall@10 >= {args.target} (smallest ef that reaches it):")
    print("  measure            faiss      milvus    milvus/faiss")
    print(f"  insert rows/s   {faiss_result['insert_rows_s']:9,.0f}  {milvus_result['insert_rows_s']:9,.0f}  "
          f"{milvus_result['insert_rows_s'] / faiss_result['insert_rows_s']:8.2f}x")
    print(f"  build s         {faiss_result['build_s']:9.1f}  {milvus_result['build_s']:9.1f}  "
          f"{milvus_result['build_s'] / faiss_result['build_s']:8.2f}x")
    if f and m:
        for key, label in (("ef", "ef"), ("recall", "recall@10"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                           ("qps", "batch QPS")):
            print(f"  {label:<14}{f[key]:10.3f}  {m[key]:10.3f}  {m[key] / f[key]:8.2f}x")
    else:
        print("  (one of them never reached the target recall in the sweep)")


if __name__ == "__main__":
    main()
