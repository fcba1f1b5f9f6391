"""Kill -9 torture of the ingest pipeline: nothing committed is lost, nothing is duplicated.

    python bench/crash_test.py [--rounds 20] [--texts 240] [--images 80] [--pdfs 4] [--clip tiny|none|SPEC]

Runs ``pipelines.testing.crash.torture``: ingests of a mixed corpus into one store, each
SIGKILLed at a random fault point, the store checked after every round, then compared
with a clean ingest of the same files (items, vectors, ranked search results). Exits 1
when anything was lost, duplicated or differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.testing.crash import torture  # noqa: E402

SUMMARY_KEYS = (
    "rounds", "killed", "completed", "kills_by_point", "items", "items_lost", "duplicates", "index_mismatches",
    "verify_errors", "items_only_in_crash", "items_only_in_clean", "vector_drift", "queries", "space_mismatches",
    "search_mismatches", "tie_reorders", "same_top_set", "seconds",
)
FAILURES = (
    "items_lost", "duplicates", "index_mismatches", "verify_errors", "items_only_in_crash", "items_only_in_clean",
    "search_mismatches", "space_mismatches",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
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
    return ap.parse_args(argv)


def clip_spec(name: str) -> str:
    if name != "tiny":
        return name
    from pipelines.synthetic import ensure_tiny_clip

    return ensure_tiny_clip(REPO / ".mmrag-cache" / "tiny-clip")


def print_summary(summary: dict[str, Any]) -> None:
    for key in SUMMARY_KEYS:
        print(f"{key:<20} {summary[key]}")
    if "baseline" in summary:
        print(f"{'baseline (clean vs clean)':<20} {json.dumps(summary['baseline'])}")
    for ex in summary["examples"][:3]:
        print("mismatch:", json.dumps(ex)[:600])


def main(argv: list[str] | None = None) -> int:
    from retriever.config import eval_data_dir

    args = parse_args(argv)
    clip = clip_spec(args.clip)
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
        print_summary(summary)
    return 1 if any(summary[key] for key in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
