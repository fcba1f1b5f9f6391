"""Cold start of a one-shot ``mmrag search``, and batch-1 query encoding by precision and threads.

Part 1 runs ``python -m pipelines.cli search QUERY --store STORE`` as a fresh subprocess, the way a
script calls it once per query, and prints where its time goes, wall and CPU: interpreter start
and exit, imports of the CLI, opening the store, importing torch + open_clip, loading CLIP,
loading the text model, the first query itself (encode, search, fuse, hydrate), and the rest
(printing the hits).
The breakdown comes from an instrumented run of the same command (``--child``: it wraps the
loaders with timers and then calls the CLI's ``main``); the totals also from the plain command.
Runs: ``cold`` with an empty weights cache (``MMRAG_CACHE`` of the run; what the first search on
a machine pays, and it fills the cache), then ``--runs`` warm ones. It also lists the heavy
modules the search imported (it should need none of langchain, fastapi, faster_whisper, av,
pypdf, rapidocr, sentence_transformers, sklearn, pandas).

Part 2 (``--encode``) times one query at a time (CLIP text, CLIP image, MiniLM) in fp32 and bf16
on 1 and on all cores' threads, optionally with ``--load N`` busy processes on the machine, the
evidence for ``models.query_threads`` and ``models.query_precision``.

The CLIP model is ViT-B-32 with random weights (seeded, saved once as a safetensors file: the
compute and the load cost of the real model; its rankings mean nothing), or ``--clip SPEC``. The
store: ``--images`` synthetic shapes and ``--texts`` one-sentence paragraphs, built once in
``--cache`` (default ``.mmrag-cache/bench-cold-start``). ``--tree DIR`` runs the search from
another checkout (e.g. ``git archive HEAD | tar -x -C DIR``) for a before/after on one store.

    python bench/cold_start.py                          # breakdown, 3 warm runs
    python bench/cold_start.py --encode --load 2        # + query encoding under load
    python bench/cold_start.py --runs 0 --encode        # query encoding only
    python bench/cold_start.py --tree /tmp/before       # the same from another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("langchain_core", "fastapi", "uvicorn", "faster_whisper", "ctranslate2", "av", "pypdf", "pypdfium2",
         "rapidocr_onnxruntime", "onnxruntime", "sentence_transformers", "sklearn", "pandas")
PHASES = ("start + exit", "cli imports", "open store", "import torch+open_clip", "CLIP load", "text model load",
          "first query", "other")
QUERY = "a red circle on the left"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the store


def random_vit(cache: Path) -> str:
    path = cache / "vit-b-32-random.safetensors"
    if not path.is_file():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)  # the same file every time, so the cached store keeps matching it
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    return f"ViT-B-32@{path}"


def write_corpus(folder: Path, images: int, texts: int) -> None:
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{images} {texts}\n":
        return
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    (folder / "texts").mkdir()
    sys.path.insert(0, str(REPO))
    from pipelines.synthetic import generate
    from retriever.encoders.text import packaged_minilm_path

    for i, sample in enumerate(generate(images, seed=11, size=96)):
        sample.image.save(folder / "images" / f"img{i:05d}.png")
    vocab = (packaged_minilm_path() / "vocab.txt").read_text().split("\n")
    words = [w for w in vocab if re.fullmatch(r"[a-z]{3,12}", w)]
    rng = random.Random(7)
    for start in range(0, texts, 100):
        paras = [" ".join(rng.choices(words, k=rng.randint(8, 16))).capitalize() + "."
                 for _ in range(min(100, texts - start))]
        (folder / "texts" / f"doc{start // 100:04d}.txt").write_text("\n\n".join(paras) + "\n")
    done.write_text(f"{images} {texts}\n")


def build_store(args: argparse.Namespace, spec: str) -> Path:
    sys.path.insert(0, str(REPO))
    from pipelines.engine import Engine

    corpus = args.cache / "corpus"
    write_corpus(corpus, args.images, args.texts)
    store = args.cache / f"store-{args.images}img-{args.texts}txt"
    settings = {"models.clip": spec, "ingest.chunk_chars": 240, "ingest.chunk_overlap": 0}
    with Engine.open(store, overrides=settings) as eng:
        t0 = time.perf_counter()
        report = eng.ingest([corpus / "images", corpus / "texts"])
        if report.added or report.updated:
            log(f"built the store: {report.items} items in {time.perf_counter() - t0:.0f} s")
    return store


# ----------------------------------------------------------------------------- part 1: one-shot search


def child(argv: list[str]) -> int:
    """The instrumented ``mmrag search``: the CLI's main with timers around the loaders."""
    t_start, c_start = time.perf_counter(), time.process_time()
    out_path, cli_args = argv[0], argv[1:]
    marks: dict[str, list[float]] = {}

    def timed(name: str, fn, once: bool = True):
        def wrapper(*a, **kw):
            if once and name in marks:
                return fn(*a, **kw)
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                got = marks.setdefault(name, [0.0, 0.0])
                got[0] += time.perf_counter() - t
                got[1] += time.process_time() - c
        return wrapper

    sys.path.insert(0, os.getcwd())
    t, c = time.perf_counter(), time.process_time()
    import pipelines.cli.commands  # noqa: F401  (what main imports before running a command)
    from pipelines.cli import main as cli_main  # the entry point of `mmrag` and `python -m pipelines.cli`
    marks["cli imports"] = [time.perf_counter() - t, time.process_time() - c]
    from pipelines.engine import Engine
    from retriever.encoders import ClipEncoder, SentenceTransformerEncoder

    def import_models() -> None:
        import open_clip  # noqa: F401
        import torch  # noqa: F401

    clip_load = ClipEncoder._load

    def clip_load_after_imports(self, *a, **kw):
        timed("import torch+open_clip", import_models)()
        return timed("CLIP load", clip_load)(self, *a, **kw)

    ClipEncoder._load = clip_load_after_imports
    SentenceTransformerEncoder._load = timed("text model load", SentenceTransformerEncoder._load)
    Engine.open = classmethod(timed("open store", Engine.open.__func__))
    Engine.search = timed("search (all)", Engine.search)
    sys.argv = ["mmrag", *cli_args]
    rc = cli_main()  # no argv: as the script calls it (it reads sys.argv and prepares a quick exit)
    total = [time.perf_counter() - t_start, time.process_time() - c_start]
    loads = [marks.get(k, [0.0, 0.0]) for k in ("import torch+open_clip", "CLIP load", "text model load")]
    search = marks.pop("search (all)", [0.0, 0.0])
    marks["first query"] = [search[i] - sum(x[i] for x in loads) for i in (0, 1)]
    marks["other"] = [total[i] - sum(v[i] for v in marks.values()) for i in (0, 1)]
    heavy = [m for m in HEAVY if m in sys.modules]
    Path(out_path).write_text(json.dumps({"rc": rc, "total": total, "phases": marks, "heavy": heavy}))
    return rc


def run_search(args: argparse.Namespace, store: Path, env: dict[str, str], instrumented: bool) -> dict:
    cmd = [sys.executable]
    out = args.cache / "child.json"
    if instrumented:
        cmd += [str(Path(__file__).resolve()), "--child", str(out)]
    else:
        cmd += ["-m", "pipelines.cli"]
    cmd += ["search", QUERY, "--store", str(store), "--k", "5", "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=args.tree, env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 or not json.loads(proc.stdout)["hits"]:
        raise SystemExit(f"search failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = {"wall": wall, "cpu": cpu}
    if instrumented:
        result.update(json.loads(out.read_text()))
        result["phases"]["start + exit"] = [wall - result["total"][0], cpu - result["total"][1]]
    return result


def one_shot(args: argparse.Namespace, store: Path) -> dict:
    env = {**os.environ, "MMRAG_CACHE": str(args.cache / "mmrag-cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(args.tree)}
    shutil.rmtree(args.cache / "mmrag-cache", ignore_errors=True)
    runs = {"cold": [run_search(args, store, env, instrumented=True)]}
    runs["warm"] = [run_search(args, store, env, instrumented=True) for _ in range(args.runs)]
    runs["plain"] = [run_search(args, store, env, instrumented=False) for _ in range(args.runs)]
    print(f"one-shot `mmrag search` from {args.tree} on {store.name}; load average {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} cores, shared); ms wall / ms CPU (median of the warm runs)")
    print(f"{'phase':<24}{'cold':>16}{'warm':>16}")
    for phase in PHASES:
        cold = runs["cold"][0]["phases"].get(phase, [0, 0])
        warm = [r["phases"].get(phase, [0, 0]) for r in runs["warm"]]
        w = [statistics.median(x[i] for x in warm) for i in (0, 1)]
        print(f"{phase:<24}{cold[0] * 1000:>8.0f}/{cold[1] * 1000:<7.0f}{w[0] * 1000:>8.0f}/{w[1] * 1000:<7.0f}")
    for name in ("cold", "warm", "plain"):
        wall = statistics.median(r["wall"] for r in runs[name])
        cpu = statistics.median(r["cpu"] for r in runs[name])
        print(f"{'TOTAL ' + name:<24}{wall * 1000:>8.0f} ms wall {cpu * 1000:>8.0f} ms CPU")
    print(f"heavy modules imported by the search: {', '.join(runs['warm'][0]['heavy']) or 'none'}")
    return runs


# ----------------------------------------------------------------------------- part 2: query encoding


def encode_bench(args: argparse.Namespace, spec: str) -> dict:
    sys.path.insert(0, str(REPO))
    import numpy as np
    from PIL import Image

    from retriever.config import ModelsConfig
    from retriever.encoders import ClipEncoder, SentenceTransformerEncoder

    image = Image.fromarray((np.random.RandomState(0).rand(224, 224, 3) * 255).astype("uint8"))
    queries = ["a red circle", "a photo of a dog on the beach", "bicycle chain maintenance tips",
               "the planets of the solar system", "how to brew coffee with a french press"]
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    results: dict[str, dict[str, float]] = {}
    try:
        for precision in ("fp32", "bf16"):
            for threads in sorted({1, os.cpu_count() or 1}):
                cfg = ModelsConfig(precision=precision, query_threads=threads)
                clip, text = ClipEncoder(spec, cfg), SentenceTransformerEncoder("all-MiniLM-L6-v2", cfg)
                cases = {"clip_text": lambda q, c=clip: c.encode_texts([q]),
                         "clip_image": lambda q, c=clip: c.encode_images([image]),
                         "minilm": lambda q, t=text: t.encode_texts([q])}
                for name, fn in cases.items():
                    results[f"{name} {precision} {threads}t"] = _time_queries(fn, queries, args.queries)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    print(f"\nbatch-1 query encoding, {args.queries} queries each, {args.load} busy processes beside it "
          f"({os.cpu_count()} cores); ms")
    print(f"{'case':<26}{'p50':>8}{'p95':>8}{'CPU p50':>9}")
    for key, r in results.items():
        print(f"{key:<26}{r['p50']:>8.1f}{r['p95']:>8.1f}{r['cpu_p50']:>9.1f}")
    return results


def _time_queries(fn, queries: list[str], n: int) -> dict[str, float]:
    for q in queries[:2]:
        fn(q)
    walls, cpus = [], []
    for i in range(n):
        t, c = time.perf_counter(), time.process_time()
        fn(queries[i % len(queries)])
        walls.append(1000 * (time.perf_counter() - t))
        cpus.append(1000 * (time.process_time() - c))
    walls.sort()
    return {"p50": statistics.median(walls), "p95": walls[min(len(walls) - 1, round(0.95 * (len(walls) - 1)))],
            "cpu_p50": statistics.median(cpus)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=REPO / ".mmrag-cache" / "bench-cold-start")
    ap.add_argument("--clip", default="random", help="'random' (ViT-B-32, random weights) or a CLIP spec")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3, help="warm runs (and plain runs); 0 skips part 1")
    ap.add_argument("--tree", type=Path, default=REPO, help="checkout to run the search from")
    ap.add_argument("--encode", action="store_true", help="also time batch-1 query encoding")
    ap.add_argument("--queries", type=int, default=40, help="queries per case with --encode")
    ap.add_argument("--load", type=int, default=0, help="busy processes during --encode")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args(argv)
    args.cache = args.cache.resolve()
    args.tree = args.tree.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MMRAG_CACHE"] = str(args.cache / "mmrag-cache")  # the bench's weights cache, not the user's
    spec = random_vit(args.cache) if args.clip == "random" else args.clip
    store = build_store(args, spec)
    out: dict = {"tree": str(args.tree)}
    if args.runs > 0:
        out["one_shot"] = one_shot(args, store)
    if args.encode:
        out["encode"] = encode_bench(args, spec)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
