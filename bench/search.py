"""Vector search benchmark: the FAISS store's index kinds against exact search and hnswlib.

Data: synthetic clustered 512-d unit vectors. A Gaussian mixture: ``--centres`` random unit
centres with Zipf-like weights; within-cluster offsets with a power-law spectrum (variance
of component i ~ 1/i, in a random rotation) scaled by ``--spread``; L2-normalised, then
rounded to float16 as the catalog stores them (indexes are always built from those). The
run prints the local intrinsic dimensionality and neighbour similarities of the data.
``--queries`` held-out queries come from the same distribution; the exact top-10 by brute
force (faiss IndexFlatIP, float32) is the truth.

Every faiss configuration is built THROUGH ``FaissStore`` (the product code), fed in 10k
batches as ``DenseSpace.rebuild`` does: "auto" is ``IndexConfig()`` as shipped (the kind
``choose_kind`` picks for N, default storage and search parameters); the others override
kind / storage (see CONFIGS) and are swept over efSearch or nprobe. Per setting: build time
(wall and CPU), memory (serialised index bytes and RSS delta), single-query p50/p99 latency
(one query per call on one thread: ``faiss.omp_set_num_threads(1)``, hnswlib
``num_threads=1``), the same p50 in thread CPU time (robust to other processes on the
machine), batch QPS (all queries in one call, all cores) and recall@10. hnswlib runs as a
peer on the same data with the store's M / efConstruction; its ef sweep is interleaved with
the store's HNSW sweeps pass by pass, so both see the same machine load. Latencies are the
best of ``--rounds`` passes. Equal-recall comparisons interpolate log-latency linearly in
recall between neighbouring sweep points.

Verdict (largest N): the automatic choice reaches recall@10 >= 0.95 at p50 <= 1 ms, within
10 % of hnswlib's p50 at the same recall.

    python bench/search.py            # 10k, 100k, 1M (~20 min on 2 idle cores, ~50 min busy)
    python bench/search.py --quick    # 10k, 100k
    python bench/search.py --sizes 1m --configs auto,hnswlib --json out.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from retriever.config import IndexConfig
from retriever.index.faiss_index import FaissStore, choose_kind, ivf_lists

K = 10
EF_SWEEP = (16, 24, 32, 48, 64, 96, 128, 192, 256)
NPROBE_SWEEP = (4, 8, 16, 32, 64, 128)
RECALL_TARGETS = (0.90, 0.95, 0.98, 0.99)
CROSSOVER_SIZES = (5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 50_000)
GOAL_RECALL, GOAL_P50_MS, GOAL_PEER_RATIO = 0.95, 1.0, 1.10
CORES = os.cpu_count() or 1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- data -------------------------------------------------------------------------------
def make_data(
    n: int, nq: int, dim: int, centres: int, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` base and ``nq`` held-out query vectors from one clustered distribution."""
    rng = np.random.default_rng(seed)
    cen = rng.standard_normal((centres, dim), dtype=np.float32)
    cen /= np.linalg.norm(cen, axis=1, keepdims=True)
    weights = 1.0 / np.sqrt(np.arange(1, centres + 1))
    weights /= weights.sum()
    spectrum = 1.0 / np.arange(1, dim + 1)
    scale = (spread * np.sqrt(spectrum / spectrum.sum())).astype(np.float32)
    rot = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    out = np.empty((n + nq, dim), np.float32)
    for s in range(0, n + nq, 50_000):
        e = min(n + nq, s + 50_000)
        z = rng.standard_normal((e - s, dim), dtype=np.float32) * scale
        x = cen[rng.choice(centres, size=e - s, p=weights)] + z @ rot
        # rounded to float16 like the catalog's durable copy, which is what indexes are built from
        out[s:e] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    return out[:n], out[n:]


def exact_topk(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    faiss.omp_set_num_threads(CORES)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index.search(xq, k)


def data_stats(sims: np.ndarray) -> str:
    """MLE local intrinsic dimensionality (Levina-Bickel) and neighbour similarities."""
    r = np.sqrt(np.maximum(2.0 - 2.0 * sims.astype(np.float64), 1e-12))

    def lid(k: int) -> float:
        return float(np.median(-1.0 / np.mean(np.log(r[:, : k - 1] / r[:, k - 1 : k]), axis=1)))

    ks = [k for k in (10, 20, 100) if k <= sims.shape[1]]
    return (
        "data: "
        + ", ".join(f"LID@{k} {lid(k):.1f}" for k in ks[1:])
        + "; median cosine of "
        + ", ".join(f"NN{k} {np.median(sims[:, k - 1]):.3f}" for k in (1, *ks))
    )


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[:K].tolist()) & set(t[:K].tolist())) for f, t in zip(found, truth))
    return hits / (K * len(truth))


# ---- memory -----------------------------------------------------------------------------
_LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def rss_bytes() -> int:
    """Resident set size after giving freed heap back to the OS."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


# ---- systems under test -----------------------------------------------------------------
@dataclass
class Searcher:
    """One built index with a tunable search parameter, as the bench drives it."""

    system: str
    config: str
    params: tuple
    default: Any
    set_param: Callable[[Any], None]
    search: Callable[[np.ndarray], np.ndarray]  # queries -> top-K ids
    set_threads: Callable[[int], None]
    build: dict = field(default_factory=dict)


@dataclass
class Row:
    n: int
    system: str
    config: str
    param: str
    is_default: bool
    build_s: float
    build_cpu_s: float
    index_mb: float
    rss_mb: float
    recall: float = 0.0
    qps: float = 0.0
    p50_ms: float = math.inf
    p99_ms: float = math.inf
    cpu_p50_ms: float = math.inf
    single_n: int = 0


def _batches(xb: np.ndarray, size: int = 10_000):
    for s in range(0, len(xb), size):
        yield np.arange(s, min(s + size, len(xb)), dtype=np.int64), xb[s : s + size]


def _timed_build(fn: Callable[[], Any], label: str, n: int) -> tuple[Any, dict]:
    log(f"   building {label} over {n:,} vectors")
    rss0 = rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    built = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    info = {"build_s": wall, "build_cpu_s": cpu, "rss_mb": (rss_bytes() - rss0) / 2**20}
    log(f"   built {label} in {wall:.1f} s ({cpu:.1f} CPU-s)")
    return built, info


def build_store(xb: np.ndarray, cfg: IndexConfig, label: str, params: tuple) -> Searcher:
    faiss.omp_set_num_threads(CORES)
    store, info = _timed_build(
        lambda: FaissStore.build(xb.shape[1], cfg, _batches(xb), len(xb)), label, len(xb)
    )
    info["index_mb"] = store.nbytes() / 2**20  # also trains/flushes an IVF still waiting for data
    if store.kind.lower() != choose_kind(cfg, len(xb)).lower():
        label = f"{label}->{store.kind}"  # an IVF with too few vectors to train falls back to flat
    knobs = store.search_params()  # {"ef_search": ..} or {"nprobe": ..} or {} (flat)
    hnsw_like = "ef_search" in knobs
    default = next(iter(knobs.values()), None)

    def set_param(p: Any) -> None:
        if p is not None:
            store.set_search_params(**({"ef_search": p} if hnsw_like else {"nprobe": p}))

    def search(q: np.ndarray) -> np.ndarray:
        return store.search(q, K)[1]

    params = tuple(sorted(set(params) | {default})) if knobs else (None,)
    return Searcher("faiss-store", label, params, default, set_param, search, faiss.omp_set_num_threads, info)


def build_hnswlib(xb: np.ndarray, cfg: IndexConfig, params: tuple) -> Searcher:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=xb.shape[1])

    def make() -> Any:
        index.init_index(
            max_elements=len(xb), M=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, random_seed=1
        )
        index.set_num_threads(CORES)
        for ids, vecs in _batches(xb):
            index.add_items(vecs, ids)
        return index

    label = f"hnsw M{cfg.hnsw_m} efC{cfg.hnsw_ef_construction}"
    _, info = _timed_build(make, f"hnswlib {label}", len(xb))
    info["index_mb"] = index.index_file_size() / 2**20

    def search(q: np.ndarray) -> np.ndarray:
        return index.knn_query(q, k=K)[0].astype(np.int64)

    return Searcher(
        "hnswlib",
        label,
        params,
        None,
        lambda p: index.set_ef(max(int(p), K)),
        search,
        index.set_num_threads,
        info,
    )


# ---- measurement ------------------------------------------------------------------------
def _single_pass(s: Searcher, xq: np.ndarray, budget_s: float) -> tuple[float, float, float, int]:
    """Per-query wall and thread-CPU latency, one query per call; stops after ``budget_s``."""
    s.set_threads(1)
    for i in range(min(20, len(xq))):
        s.search(xq[i : i + 1])
    wall, cpu = np.zeros(len(xq)), np.zeros(len(xq))
    gc.disable()
    start, done = time.perf_counter(), 0
    try:
        for i in range(len(xq)):
            q = xq[i : i + 1]
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            s.search(q)
            cpu[i], wall[i] = time.thread_time_ns() - c0, time.perf_counter_ns() - t0
            done = i + 1
            if done >= 30 and time.perf_counter() - start > budget_s:
                break
    finally:
        gc.enable()
    wall, cpu = wall[:done] / 1e6, cpu[:done] / 1e6
    return float(np.percentile(wall, 50)), float(np.percentile(wall, 99)), float(np.percentile(cpu, 50)), done


def _batch(s: Searcher, xq: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    s.set_threads(CORES)
    t0 = time.perf_counter()
    found = s.search(xq)
    return len(xq) / (time.perf_counter() - t0), recall_at_k(found, truth)


def measure_group(
    group: list[Searcher], n: int, xq: np.ndarray, truth: np.ndarray, rounds: int, budget: float
) -> list[Row]:
    """Batch QPS and recall once per setting; single-query passes interleaved across the group."""
    rows: dict[tuple[int, Any], Row] = {}
    for gi, s in enumerate(group):
        for p in s.params:
            s.set_param(p)
            qps, rec = _batch(s, xq, truth)
            b = s.build
            rows[gi, p] = Row(
                n,
                s.system,
                s.config,
                "-" if p is None else str(p),
                p == s.default,
                b["build_s"],
                b["build_cpu_s"],
                b["index_mb"],
                b["rss_mb"],
                rec,
                qps,
            )
        if s.default is not None:
            s.set_param(s.default)
    params = sorted({p for s in group for p in s.params}, key=lambda p: (p is None, p or 0))
    for r in range(rounds):
        log(f"   latency pass {r + 1}/{rounds}: {', '.join(s.config for s in group)}")
        for p in params:
            for gi, s in enumerate(group):
                if p not in s.params:
                    continue
                s.set_param(p)
                p50, p99, c50, done = _single_pass(s, xq, budget)
                row = rows[gi, p]
                row.p50_ms, row.p99_ms = min(row.p50_ms, p50), min(row.p99_ms, p99)
                row.cpu_p50_ms, row.single_n = min(row.cpu_p50_ms, c50), max(row.single_n, done)
    return list(rows.values())


# ---- reporting --------------------------------------------------------------------------
def print_table(rows: list[Row], file: Any = None) -> None:
    out = file or sys.stdout
    head = (
        "N",
        "system",
        "config",
        "param",
        "build s",
        "build CPU-s",
        "index MB",
        "RSS+ MB",
        "recall@10",
        "p50 ms",
        "p99 ms",
        "CPU p50 ms",
        "batch QPS",
    )
    print("| " + " | ".join(head) + " |", file=out)
    print("|" + "---|" * len(head), file=out)
    for r in rows:
        mark = "*" if r.is_default else ""
        cells = (
            f"{r.n:,}",
            r.system,
            r.config,
            r.param + mark,
            f"{r.build_s:.1f}",
            f"{r.build_cpu_s:.1f}",
            f"{r.index_mb:.0f}",
            f"{r.rss_mb:.0f}",
            f"{r.recall:.3f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.cpu_p50_ms:.3f}",
            f"{r.qps:,.0f}",
        )
        print("| " + " | ".join(cells) + " |", file=out)
    print(
        "(* = the store's default parameter; latencies: best of the passes; single-query on 1 thread)",
        file=out,
    )


def latency_at(curve: list[Row], target: float, attr: str = "p50_ms") -> float | None:
    """Latency at ``target`` recall, interpolated (log-latency, linear in recall) along a sweep."""
    pts = sorted(((r.recall, getattr(r, attr)) for r in curve), key=lambda t: t[1])
    best: list[tuple[float, float]] = []
    for rec, lat in pts:  # lower envelope: each next point must add recall
        if not best or rec > best[-1][0]:
            best.append((rec, lat))
    for i, (rec, lat) in enumerate(best):
        if rec >= target:
            if i == 0:
                return lat
            (r0, l0), (r1, l1) = best[i - 1], best[i]
            w = (target - r0) / (r1 - r0)
            return float(math.exp(math.log(l0) + w * (math.log(l1) - math.log(l0))))
    return None


def _curves(rows: list[Row], n: int) -> tuple[list[Row], list[Row]]:
    store = [r for r in rows if r.n == n and r.system == "faiss-store" and r.config in ("auto:hnsw", "hnsw")]
    peer = [r for r in rows if r.n == n and r.system == "hnswlib"]
    return store, peer


def print_ratios(rows: list[Row]) -> None:
    for n in sorted({r.n for r in rows}):
        store, peer = _curves(rows, n)
        if store and peer:
            print(f"\nN={n:,}: faiss-store HNSW vs hnswlib at equal recall (p50 ms, wall | thread CPU)")
            for t in RECALL_TARGETS:
                a, b = latency_at(store, t), latency_at(peer, t)
                ac, bc = latency_at(store, t, "cpu_p50_ms"), latency_at(peer, t, "cpu_p50_ms")
                if None in (a, b, ac, bc):
                    print(f"  recall {t:.2f}: not reached by both")
                    continue
                print(
                    f"  recall {t:.2f}: store {a:.3f} vs hnswlib {b:.3f} (x{a / b:.2f}) | CPU {ac:.3f} vs {bc:.3f} (x{ac / bc:.2f})"
                )
        flat = [r for r in rows if r.n == n and r.config in ("auto:flat", "flat")]
        fast = [r for r in rows if r.n == n and r.recall >= GOAL_RECALL and r.system == "faiss-store"]
        if flat and fast:
            best = min(fast, key=lambda r: r.p50_ms)
            print(
                f"N={n:,}: flat p50 {flat[0].p50_ms:.3f} ms; fastest store config with recall >= {GOAL_RECALL}: "
                f"{best.config} {best.param} p50 {best.p50_ms:.3f} ms (x{flat[0].p50_ms / best.p50_ms:.1f} vs flat), "
                f"{best.index_mb / max(flat[0].index_mb, 1e-9):.2f} x flat's memory"
            )


def flat_crossover(xb: np.ndarray, xq: np.ndarray, rounds: int) -> list[tuple[int, float]]:
    """Single-query p50 of the default exact index on prefixes of ``xb`` (where it crosses 1 ms)."""
    cfg = IndexConfig(kind="flat")
    out = []
    for n in [s for s in CROSSOVER_SIZES if s <= len(xb)]:
        store = FaissStore.build(xb.shape[1], cfg, _batches(xb[:n]), n)
        out.append((n, _store_p50(store, xq[:300], rounds)))
    return out


def _store_p50(store: FaissStore, xq: np.ndarray, rounds: int) -> float:
    s = Searcher(
        "faiss-store",
        store.kind,
        (None,),
        None,
        lambda p: None,
        lambda q: store.search(q, K)[1],
        faiss.omp_set_num_threads,
    )
    return min(_single_pass(s, xq, 2.0)[0] for _ in range(rounds))


def print_crossover(points: list[tuple[int, float]]) -> None:
    if not points:
        return
    cfg = IndexConfig()
    print(
        f"\nexact search (flat, storage {cfg.storage}) single-query p50 by N: "
        + ", ".join(f"{n // 1000}k {ms:.2f} ms" for n, ms in points)
    )
    above = [n for n, ms in points if ms > GOAL_P50_MS]
    print(
        f"flat crosses {GOAL_P50_MS} ms between "
        f"{max([n for n, ms in points if ms <= GOAL_P50_MS], default=0):,} and {min(above, default=0):,} "
        f"vectors; IndexConfig.flat_threshold = {cfg.flat_threshold:,}"
    )


def verdict(rows: list[Row], n: int) -> tuple[str, bool]:
    """One line: does the automatic choice at ``n`` meet the goal?"""
    auto = [r for r in rows if r.n == n and r.config.startswith("auto:") and r.is_default]
    if not auto:
        return f"VERDICT N={n:,}: auto configuration not measured (--configs lacks auto)", False
    a = auto[0]
    _, peer = _curves(rows, n)
    peer_lat = latency_at(peer, a.recall) if peer else None
    peer_cpu = latency_at(peer, a.recall, "cpu_p50_ms") if peer else None
    ratio = a.p50_ms / peer_lat if peer_lat else None
    ok = (
        a.recall >= GOAL_RECALL
        and a.p50_ms <= GOAL_P50_MS
        and (ratio is not None and ratio <= GOAL_PEER_RATIO)
    )
    if ratio is not None and peer_cpu:
        peer_txt = (
            f"hnswlib at equal recall {peer_lat:.3f} ms (x{ratio:.2f}; thread CPU "
            f"{a.cpu_p50_ms:.3f} vs {peer_cpu:.3f} ms, x{a.cpu_p50_ms / peer_cpu:.2f})"
        )
    else:
        peer_txt = "hnswlib not measured" if not peer else f"hnswlib never reached recall {a.recall:.3f}"
    line = (
        f"VERDICT N={n:,}: {'PASS' if ok else 'FAIL'} - auto picks {a.config} param {a.param}: recall@10 "
        f"{a.recall:.3f} (goal >= {GOAL_RECALL}), p50 {a.p50_ms:.3f} ms (goal <= {GOAL_P50_MS}), {peer_txt} "
        f"(goal <= x{GOAL_PEER_RATIO:.2f})"
    )
    return line, ok


# ---- driver -----------------------------------------------------------------------------
def parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10k,100k,1m", help="comma-separated N (10k, 100k, 1m, ...)")
    p.add_argument("--quick", action="store_true", help="10k and 100k only")
    p.add_argument("--configs", help=f"comma-separated subset of hnswlib,{','.join(CONFIGS)} (default: all)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--centres", type=int, default=2048)
    p.add_argument("--spread", type=float, default=0.75, help="within-cluster spread (higher = harder)")
    p.add_argument("--rounds", type=int, default=3, help="latency passes per setting; the best is kept")
    p.add_argument("--pass-budget", type=float, default=4.0, help="max seconds of one single-query pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write all rows and the verdict here")
    args = p.parse_args(argv)
    args.sizes = (
        [10_000, 100_000] if args.quick else [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    )
    args.explicit = args.configs is not None
    names = ["hnswlib", *CONFIGS]
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()] if args.explicit else names
    unknown = set(args.configs) - set(names)
    if unknown:
        p.error(f"unknown configs {sorted(unknown)}; expected some of {','.join(names)}")
    return args


# label -> IndexConfig overrides; "auto" is the product default, the rest are what the store offers
CONFIGS: dict[str, dict[str, Any]] = {
    "auto": {},
    "flat": {"kind": "flat"},
    "flat-fp32": {"kind": "flat", "storage": "fp32"},
    "hnsw": {"kind": "hnsw"},
    "hnsw-fp32": {"kind": "hnsw", "storage": "fp32"},
    "hnsw-sq8": {"kind": "hnsw", "storage": "sq8"},
    "ivf": {"kind": "ivf"},
    "ivf-sq8": {"kind": "ivf", "storage": "sq8"},
    "ivfpq": {"kind": "ivfpq"},
}
HEAVY_ABOVE = 200_000  # extra HNSW builds (minutes each on 2 cores) run above this N only when named


def _wanted(args: argparse.Namespace, n: int, auto_cfg: IndexConfig) -> list[str]:
    """Configurations to run at ``n``: skip duplicates of the automatic choice and heavy extras."""
    out = []
    for label in args.configs:
        if label == "hnswlib" or label == "auto":
            out.append(label)
            continue
        cfg = replace(IndexConfig(), **CONFIGS[label])
        if "auto" in args.configs and _same(cfg, auto_cfg, n):
            continue
        if cfg.kind.startswith("ivf") and n < 39 * ivf_lists(n):
            log(
                f"   skipping {label} at N={n:,}: too few vectors to train its lists (the store searches exactly)"
            )
            continue
        if n > HEAVY_ABOVE and label.startswith("hnsw-") and not args.explicit:
            log(f"   skipping {label} at N={n:,} (another HNSW build; name it in --configs to run it)")
            continue
        out.append(label)
    return out


def _same(a: IndexConfig, b: IndexConfig, n: int) -> bool:
    return choose_kind(a, n).lower() == choose_kind(b, n).lower() and a.storage == b.storage


def _sweep(kind: str) -> tuple:
    low = kind.lower()
    return EF_SWEEP if low.startswith("hnsw") else NPROBE_SWEEP if low.startswith("ivf") else (None,)


def bench_size(n: int, args: argparse.Namespace) -> list[Row]:
    """Every requested configuration at one N."""
    auto_cfg = IndexConfig()
    auto_kind = choose_kind(auto_cfg, n).lower()
    log(f"== N={n:,}: data (auto picks {auto_kind!r}, storage {auto_cfg.storage})")
    xb, xq = make_data(n, args.queries, args.dim, args.centres, args.spread, args.seed)
    truth_sims, truth = exact_topk(xb, xq, min(100, n))
    log("   " + data_stats(truth_sims))
    m = {"n": n, "xq": xq, "truth": truth[:, :K], "rounds": args.rounds, "budget": args.pass_budget}
    labels = _wanted(args, n, auto_cfg)
    rows: list[Row] = []
    # measured together, pass by pass: the automatic choice, the store's HNSW and the peer
    together = [lb for lb in ("auto", "hnsw", "hnswlib") if lb in labels]
    group: list[Searcher] = []
    for label in together:
        if label == "auto":
            group.append(build_store(xb, auto_cfg, f"auto:{auto_kind}", _sweep(auto_kind)))
        elif label == "hnsw":
            group.append(build_store(xb, replace(auto_cfg, **CONFIGS["hnsw"]), "hnsw", EF_SWEEP))
        elif auto_kind == "hnsw" or "hnsw" in labels:
            group.append(build_hnswlib(xb, auto_cfg, EF_SWEEP))
    if group:
        rows += measure_group(group, **m)
    del group
    for label in [lb for lb in labels if lb not in together]:
        cfg = replace(IndexConfig(), **CONFIGS[label])
        rows += measure_group([build_store(xb, cfg, label, _sweep(cfg.kind))], **m)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log(f"faiss {faiss.__version__}, {CORES} cores; defaults {IndexConfig()}; spread {args.spread}")
    t0 = time.time()
    rows: list[Row] = []
    crossover: list[tuple[int, float]] = []
    for n in args.sizes:
        done = bench_size(n, args)
        if n == max(args.sizes) and n >= CROSSOVER_SIZES[-1]:
            log("   exact-search latency on prefixes (flat_threshold)")
            xb, xq = make_data(n, args.queries, args.dim, args.centres, args.spread, args.seed)
            crossover = flat_crossover(xb[: CROSSOVER_SIZES[-1]], xq, args.rounds)
            del xb, xq
        log(f"   N={n:,} done at {time.time() - t0:.0f} s")
        print_table(done, file=sys.stderr)
        rows += done
    print_table(rows)
    print_ratios(rows)
    print_crossover(crossover)
    line, ok = verdict(rows, max(args.sizes))
    print("\n" + line)
    if args.json:
        out = {"rows": [asdict(r) for r in rows], "flat_p50_ms_by_n": crossover, "verdict": line, "pass": ok}
        args.json.write_text(json.dumps(out, indent=1))
    log(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
