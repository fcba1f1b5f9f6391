"""Latency of ``POST /search`` (the endpoint the web page calls) under concurrent clients, against a
real ``mmrag serve`` on loopback.

    python bench/serve_load.py                      # 8 clients, then 1 client as the peer
    python bench/serve_load.py --clients 8 --requests 200 --k 20 --json out.json

The store is built once from the public evaluation data (``MMRAG_EVAL_DATA``, default
``../shared/eval``: every COCO photo, five PDFs, every speech clip, two videos) with the
tiny test CLIP (``--clip``) and MiniLM, and cached under ``--work``. The queries are the COCO
captions and the reference transcripts, in turn. Each client is a thread with its own
keep-alive connection that sends its requests one after another; the latency is measured
from send to the parsed JSON body.

The server allows ``ServerLimits.requests_per_minute`` (600) requests per client address in
bursts of as many; each client connects from its own loopback address (127.0.0.N) and sends
fewer requests than that, so no request is refused (a 429 would be counted and reported).
The clients run on the same machine as the server and take CPU from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx

from pipelines.testing.serve import start_serve, stop  # noqa: E402

PDFS = ("docling__multi_page.pdf", "pypdf__crazyones.pdf", "docling__redp5110_sampled.pdf",
        "pdfplumber__federal-register-2020-17221.pdf", "pdfplumber__scotus-transcript-p1.pdf")
VIDEOS = ("big_buck_bunny_small.mp4", "grid_bbaf2n.mpg")
BURST = 600  # ServerLimits.requests_per_minute: the most requests one client address may send at once


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--requests", type=int, default=200, help="requests per client (default 200)")
    ap.add_argument("--k", type=int, default=20, help="hits per search (the page's default, 20)")
    ap.add_argument("--clip", default="tiny", help="tiny (the test CLIP, trained and cached) or a CLIP spec")
    ap.add_argument("--work", default=str(REPO / ".mmrag-cache" / "bench-serve"), help="store cache folder")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.requests >= BURST - 10:
        ap.error(f"--requests must stay under {BURST - 10}: one client address may send {BURST} at once")
    if not 1 <= args.clients <= 200:
        ap.error("--clients expects 1..200")
    return args


def eval_dir() -> Path:
    from retriever.config import eval_data_dir

    path = eval_data_dir()
    if not path.is_dir():
        sys.exit(f"evaluation data not found at {path} (set MMRAG_EVAL_DATA)")
    return path


def clip_spec(name: str) -> str:
    if name != "tiny":
        return name
    from pipelines.synthetic import ensure_tiny_clip

    return ensure_tiny_clip(REPO / ".mmrag-cache" / "tiny-clip")


def build_store(work: Path, data: Path, clip: str) -> Path:
    """The store of the evaluation data (built once, reused while ``.complete`` is there)."""
    store, docs = work / "store", work / "docs"
    if (work / ".complete").is_file():
        return store
    shutil.rmtree(work, ignore_errors=True)
    docs.mkdir(parents=True)
    files = [*sorted((data / "images" / "coco").glob("*.jpg")), *[data / "pdf" / n for n in PDFS],
             *sorted(p for p in (data / "audio").iterdir() if p.suffix in (".wav", ".flac")),
             *[data / "video" / n for n in VIDEOS]]
    for path in files:
        shutil.copy(path, docs / path.name)
    from pipelines.engine import Engine

    log(f"ingesting {len(files)} files into {store} (once)")
    with Engine.open(store, overrides={"models.clip": clip}) as eng:
        report = eng.ingest([docs])
    log(f"ingested: {report.added} sources, {report.items} items, {len(report.failed)} failed, {report.seconds:.0f} s")
    (work / ".complete").write_text("ok\n")
    return store


def queries(data: Path) -> list[str]:
    captions = json.loads((data / "images" / "captions.json").read_text())
    out = [texts[0] for _name, texts in sorted(captions.items())]
    transcripts = json.loads((data / "audio" / "transcripts.json").read_text())
    for entry in transcripts.values():
        text = entry.get("text") if isinstance(entry, dict) else None
        if isinstance(text, str) and text.strip():
            out.append(" ".join(text.split()[:12]))
    return out


def client_run(base: str, address: str, texts: list[str], offset: int, n: int, k: int, out: dict[str, Any]) -> None:
    """``n`` searches one after another over one keep-alive connection from ``address``."""
    latencies: list[float] = []
    refused = 0
    with httpx.Client(base_url=base, transport=httpx.HTTPTransport(local_address=address), timeout=60) as c:
        for i in range(n):
            body = {"text": texts[(offset + i) % len(texts)], "k": k}
            t0 = time.perf_counter()
            resp = c.post("/search", json=body)
            resp.json()
            latencies.append(time.perf_counter() - t0)
            refused += resp.status_code == 429
            if resp.status_code not in (200, 429):
                raise RuntimeError(f"POST /search answered {resp.status_code}: {resp.text[:200]}")
    out["latencies"], out["refused"] = latencies, refused


def load(base: str, clients: int, n: int, k: int, texts: list[str], first_address: int) -> dict[str, Any]:
    """Run ``clients`` clients of ``n`` requests each at once; their latencies and throughput."""
    results: list[dict[str, Any]] = [{} for _ in range(clients)]
    threads = [threading.Thread(target=client_run, args=(base, f"127.0.0.{first_address + i}", texts,
                                                          i * 7, n, k, results[i])) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies = sorted(x for r in results for x in r.get("latencies", []))
    if len(latencies) != clients * n:
        raise RuntimeError("a client failed; see the messages above")
    return {
        "clients": clients, "requests": len(latencies), "refused_429": sum(r["refused"] for r in results),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1),
        "requests_per_s": round(len(latencies) / wall, 1), "seconds": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = eval_dir()
    work = Path(args.work)
    store = build_store(work, data, clip_spec(args.clip))
    texts = queries(data)
    proc, base = start_serve(store, work / "serve.log")
    try:
        log("warming up (models load on the first search)")
        load(base, 1, 20, args.k, texts, first_address=250)
        log(f"{args.clients} clients x {args.requests} requests")
        many = load(base, args.clients, args.requests, args.k, texts, first_address=10)
        log(f"1 client x {args.requests} requests")
        one = load(base, 1, args.requests, args.k, texts, first_address=5)
    finally:
        stop(proc)
    stats = json.loads(subprocess.run([sys.executable, "-m", "pipelines.cli", "stats", "--json", "--store", str(store)],
                                      capture_output=True, text=True, cwd=REPO, check=True).stdout)
    result = {"store": {"sources": stats["sources"], "items": stats["items"],
                        "items_by_modality": stats["items_by_modality"]},
              "k": args.k, "cpus": os.cpu_count(), "concurrent": many, "single": one}
    print(f"POST /search, k={args.k}, store of {stats['items']} items ({stats['sources']} sources), "
          f"{os.cpu_count()} CPUs, server and clients on one machine")
    for name, r in (("concurrent", many), ("single", one)):
        print(f"  {r['clients']} client(s): p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, mean {r['mean_ms']} ms, "
              f"{r['requests_per_s']} requests/s ({r['requests']} requests, {r['refused_429']} refused)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
