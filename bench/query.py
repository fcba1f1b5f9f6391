"""End-to-end text query latency on a store of ``--items`` text items (default 100k).

The corpus is synthetic: sentences of 8-16 words drawn Zipf-like from the real English
word pieces of MiniLM's vocabulary, one sentence per paragraph, 100 per file; ingested
through the normal pipeline (``ingest.chunk_chars=240``, no overlap: one or two sentences
an item, ``--items`` chunks in all) into a store cached under ``--cache`` and reused by
later runs. Queries are 5-9 consecutive words of random corpus sentences.

Each query goes through ``Retriever.search`` (what ``Engine.search`` calls) with its
timing hook, so the stages add up to the total: ``sync`` (catch up with the catalog),
``encode.<run>`` (query embedding, bf16 where the CPU has it), ``search.<run>`` (FAISS /
BM25), ``fuse`` (RRF), ``hydrate`` (catalog reads of the top k), ``hits``. Goal: total
p50 <= 50 ms on this CPU.

    python bench/query.py                        # text space + BM25 (CLIP 'none')
    python bench/query.py --clip random          # + a randomly initialised ViT-B/32 and 1,000
                                                 #   synthetic images (timing only)
    python bench/query.py --items 20000 --queries 100 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipelines.engine import Engine
from retriever.search import Query

GOAL_P50_MS = 50.0
PER_FILE = 100
STORE_SETTINGS = {"ingest.chunk_chars": 240, "ingest.chunk_overlap": 0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def vocabulary() -> list[str]:
    """Whole English words from MiniLM's WordPiece vocabulary (ships with the model)."""
    from retriever.encoders.text import packaged_minilm_path

    words = (packaged_minilm_path() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return [w for w in words if re.fullmatch(r"[a-z]{3,12}", w)]


class SentenceMaker:
    """Zipf-distributed words (a fixed random rank order), 8-20 words a sentence."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        words = vocabulary()
        self.rng.shuffle(words)
        self.words = words
        self.cum_weights = list(itertools.accumulate(1.0 / (rank + 10) for rank in range(len(words))))

    def sentence(self) -> str:
        n = self.rng.randint(8, 16)
        words = self.rng.choices(self.words, cum_weights=self.cum_weights, k=n)
        return words[0].capitalize() + " " + " ".join(words[1:]) + "."


def write_corpus(root: Path, items: int, seed: int) -> Path:
    """Files of ``PER_FILE`` one-sentence paragraphs holding exactly ``items`` chunks; reused when complete."""
    from indexers.chunking import chunk_spans

    corpus = root / f"corpus-{items}"
    done = corpus / ".complete"
    if done.is_file():
        return corpus
    corpus.mkdir(parents=True, exist_ok=True)
    maker = SentenceMaker(seed)
    size, overlap = STORE_SETTINGS["ingest.chunk_chars"], STORE_SETTINGS["ingest.chunk_overlap"]
    made, f = 0, 0
    while made < items:
        sentences = [maker.sentence() for _ in range(PER_FILE)]
        count = len(chunk_spans("\n\n".join(sentences) + "\n", size, overlap))
        if made + count > items:  # the last file: only as many sentences as still fit
            keep = 0
            while keep < len(sentences):
                keep += 1
                count = len(chunk_spans("\n\n".join(sentences[:keep]) + "\n", size, overlap))
                if made + count >= items:
                    break
            sentences = sentences[:keep]
        (corpus / f"doc{f:05d}.txt").write_text("\n\n".join(sentences) + "\n")
        made, f = made + count, f + 1
    done.write_text(f"{made} chunks\n")
    return corpus


def write_images(cache: Path, n: int) -> Path:
    """``n`` synthetic shape pictures (96 px PNG), written once: the visual items a CLIP run ranks."""
    from pipelines.synthetic import generate

    folder = cache / f"images-{n}"
    done = folder / ".complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i, sample in enumerate(generate(n, seed=11, size=96)):
            sample.image.save(folder / f"img{i:05d}.png")
        done.write_text(f"{n}\n")
    return folder


def clip_spec(arg: str, cache: Path) -> str:
    """'none', 'random' (a randomly initialised ViT-B-32 saved once: timing only) or a spec."""
    if arg != "random":
        return arg
    path = cache / "vit-b-32-random.safetensors"
    if not path.is_file():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)  # the same file every time, so a cached store keeps matching it
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"ViT-B-32@{path}"


def build(args: argparse.Namespace) -> Engine:
    cache = Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(cache, args.items, args.seed)
    spec = clip_spec(args.clip, cache)
    store = cache / f"store-{args.items}-{'clip-' + args.clip if args.clip != 'none' else 'text'}"
    if args.images:
        store = store.with_name(store.name + f"-{args.images}img")
    eng = Engine.open(store, overrides={"models.clip": spec, **STORE_SETTINGS})
    t0 = time.perf_counter()
    last = [0.0]

    def progress(label: str, done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            log(f"ingest {done}/{total} files")

    report = eng.ingest([corpus, *([write_images(cache, args.images)] if args.images else [])], progress=progress)
    if report.added or report.updated:
        log(f"ingested {report.items} items from {report.added} files in {time.perf_counter() - t0:.0f} s")
    return eng


def make_queries(corpus: Path, n: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    files = sorted(corpus.glob("doc*.txt"))
    out = []
    for _ in range(n):
        sentences = rng.choice(files).read_text().split("\n\n")
        words = rng.choice(sentences).rstrip(".\n").split()
        size = min(len(words), rng.randint(5, 9))
        start = rng.randint(0, len(words) - size)
        out.append(" ".join(words[start : start + size]))
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def run(eng: Engine, queries: list[str], warmup: int, k: int) -> tuple[list[float], dict[str, list[float]]]:
    retriever = eng.retriever()
    for q in queries[:warmup]:
        retriever.search(Query(text=q, k=k))
    totals: list[float] = []
    stages: dict[str, list[float]] = {"cpu": []}
    for q in queries[warmup:]:
        timings: dict[str, float] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        hits = retriever.search(Query(text=q, k=k), timings)
        totals.append(1000 * (time.perf_counter() - t0))
        stages["cpu"].append(1000 * (time.process_time() - c0))
        assert hits, f"no hits for {q!r}"
        for name, sec in timings.items():
            stages.setdefault(name, []).append(1000 * sec)
    engine_totals = []  # the public API adds its consistency check (catalog head before/after)
    for q in queries[warmup:]:
        t0 = time.perf_counter()
        eng.search(text=q, k=k)
        engine_totals.append(1000 * (time.perf_counter() - t0))
    stages["engine"] = engine_totals
    return totals, stages


def report(eng: Engine, totals: list[float], stages: dict[str, list[float]], args: argparse.Namespace) -> dict:
    stats = eng.stats()
    plan = eng.text_encoder.device_plan
    print(f"store: {stats['items']} items; spaces: "
          + ", ".join(f"{n} {s['vectors']} vectors ({s['index']})" for n, s in stats["spaces"].items())
          + f"; bm25 {stats['bm25_docs']} docs; encoders on {plan.device} {plan.precision}; {os.cpu_count()} cores")
    print(f"{len(totals)} queries, k={args.k}, depth={eng.config.search.depth}")
    print(f"{'stage':<20}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'share':>8}")
    mean_total = statistics.fmean(totals)
    cpu = stages.pop("cpu")
    engine_totals = stages.pop("engine")
    rows = {}
    for name, vals in sorted(stages.items(), key=lambda kv: -statistics.fmean(kv[1])):
        vals = vals + [0.0] * (len(totals) - len(vals))
        rows[name] = {"p50": pct(vals, 50), "p99": pct(vals, 99), "mean": statistics.fmean(vals)}
        print(f"{name:<20}{rows[name]['p50']:>9.2f}{rows[name]['p99']:>9.2f}{rows[name]['mean']:>9.2f}"
              f"{rows[name]['mean'] / mean_total:>8.1%}")
    other = mean_total - sum(r["mean"] for r in rows.values())
    print(f"{'(untimed)':<20}{'':>9}{'':>9}{other:>9.2f}{other / mean_total:>8.1%}")
    p50, p99 = pct(totals, 50), pct(totals, 99)
    print(f"{'TOTAL':<20}{p50:>9.2f}{p99:>9.2f}{mean_total:>9.2f}")
    print(f"{'(process CPU time)':<20}{pct(cpu, 50):>9.2f}{pct(cpu, 99):>9.2f}{statistics.fmean(cpu):>9.2f}"
          f"   load average {os.getloadavg()[0]:.1f} (other processes share these {os.cpu_count()} cores)")
    print(f"{'Engine.search':<20}{pct(engine_totals, 50):>9.2f}{pct(engine_totals, 99):>9.2f}"
          f"{statistics.fmean(engine_totals):>9.2f}   (same queries again through the public API)")
    top = max(rows, key=lambda n: rows[n]["mean"])
    verdict = ("PASS" if p50 <= GOAL_P50_MS else "FAIL") + (
        f": total p50 {p50:.1f} ms (goal <= {GOAL_P50_MS:.0f} ms), p99 {p99:.1f} ms; "
        f"largest stage {top} ({rows[top]['mean'] / mean_total:.0%} of the time)")
    print(verdict)
    return {"items": stats["items"], "spaces": stats["spaces"], "precision": plan.precision, "queries": len(totals),
            "total": {"p50": p50, "p99": p99, "mean": mean_total}, "stages": rows, "verdict": verdict,
            "cpu": {"p50": pct(cpu, 50), "p99": pct(cpu, 99)}, "load_average": os.getloadavg()[0],
            "engine_search": {"p50": pct(engine_totals, 50), "p99": pct(engine_totals, 99)},
            "clip": args.clip, "images": args.images}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clip", default="none", help="'none' (default), 'random' (ViT-B-32, random weights) or a spec")
    ap.add_argument("--cache", default=str(Path(__file__).resolve().parent.parent / ".mmrag-cache" / "bench-query"))
    ap.add_argument("--images", type=int, default=None,
                    help="synthetic images beside the text (default 1000 with a CLIP model, else 0)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    if args.images is None:
        args.images = 1000 if args.clip != "none" else 0
    with build(args) as eng:
        queries = make_queries(Path(args.cache).resolve() / f"corpus-{args.items}", args.queries + args.warmup, args.seed)
        totals, stages = run(eng, queries, args.warmup, args.k)
        out = report(eng, totals, stages, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
