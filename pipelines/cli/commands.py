"""The CLI's sub-commands: each takes the parsed args, config overrides and an emitter."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.arguments import existing_paths, modality_list
from pipelines.cli import exit_codes
from pipelines.cli.keys import cmd_keys, store_has_keys
from pipelines.engine import Engine
from retriever.errors import MmragError
from retriever.store import Store
from retriever.types import Hit

__all__ = ["COMMANDS", "Command", "Emit", "format_hits", "format_report", "format_verify", "printable"]

Emit = Callable[[argparse.Namespace, Any, str], None]
Command = Callable[[argparse.Namespace, dict[str, Any], Emit], int]


def _engine(args: argparse.Namespace, overrides: dict[str, Any], create: bool = False) -> Engine:
    """The engine on ``--store``; only writing commands (``create=True``) may create a new store."""
    return Engine.open(args.store, overrides=overrides, create=create)


def printable(text: str) -> str:
    """``text`` with control characters (a newline in a file name) escaped, for one-line output."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """Ingest progress on stderr: a bar on a terminal, else a line every few seconds (``pipelines.cli.logs``)."""
    if not enabled:
        yield None
        return
    from pipelines.cli.logs import ingest_progress

    with ingest_progress() as progress:
        yield progress


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"added {report['added']}, updated {report['updated']}, unchanged {report['unchanged']}, "
        f"failed {len(report['failed'])}, skipped {len(report['skipped'])}"
        + (f", removed {report['removed']}" if report.get("removed") else "")
        + f"  ({report['items']} items in {report['seconds']:.1f} s)"
    ]
    lines += [f"  failed  {printable(f['path'])}: {printable(f['reason'])}" for f in report["failed"]]
    lines += [f"  skipped {printable(f['path'])}: {printable(f['reason'])}" for f in report["skipped"][:20]]
    if len(report["skipped"]) > 20:
        lines.append(f"  ... and {len(report['skipped']) - 20} more skipped")
    return "\n".join(lines)


def format_hits(hits: list[Hit]) -> str:
    if not hits:
        return "no results"
    out = []
    for rank, hit in enumerate(hits, start=1):
        spaces = " ".join(f"{name}#{r}" for name, r in sorted(hit.ranks.items()))
        out.append(f"{rank:>2}. {printable(hit.citation)}  [{hit.modality.value}/{hit.kind}]  "
                   f"score={hit.score:.4f}  ({spaces})")
        if hit.snippet:
            out.append(f"     {printable(hit.snippet)}")
        elif hit.thumbnail_path:
            out.append(f"     thumbnail: {printable(hit.thumbnail_path)}")
        if hit.copies:
            out.append(f"     also in: {printable('; '.join(hit.copies))}")
    return "\n".join(out)


def cmd_ingest(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    existing_paths(args.paths, "ingest")  # a missing input is a usage error before a store is created
    with _progress(not args.json) as progress, _engine(args, overrides, create=True) as eng:
        executor = None if args.ray is None else "ray"  # --ray [ADDRESS]: on a Ray cluster
        report = eng.ingest(args.paths, prune=args.prune, progress=progress, executor=executor,
                            ray_address=args.ray or None).to_dict()
    emit(args, report, format_report(report))
    return exit_codes.STRICT if args.strict and report["failed"] else exit_codes.OK


def cmd_search(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    where: dict[str, Any] = {}
    for pair in args.where:
        key, sep, value = pair.partition("=")
        if not sep:
            raise MmragError(f"--where expects KEY=VALUE, got {pair!r}")
        where[key] = value
    if args.source:
        where["source"] = args.source
    if args.text is None and not args.image and not args.audio:
        raise MmragError("search needs TEXT, --image FILE or --audio FILE")
    modality_list(args.modality or None)  # bad names fail before the store opens
    with _engine(args, overrides) as eng:
        hits = eng.search(
            text=args.text, image=args.image, audio=args.audio, k=args.k,
            modalities=args.modality or None, where=where, mmr=args.mmr or None,
        )
    payload = {"query": {"text": args.text, "image": args.image, "audio": args.audio}, "hits": [h.to_dict() for h in hits]}
    emit(args, payload, format_hits(hits))
    return exit_codes.OK


def cmd_ask(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    stream = not args.json and not args.no_stream
    streamed: list[str] = []

    def on_token(tok: str) -> None:
        streamed.append(tok)
        sys.stdout.write(tok)
        sys.stdout.flush()

    with _engine(args, overrides) as eng:
        answer = eng.ask(args.question, k=args.k, modalities=args.modality or None,
                         on_token=on_token if stream else None)
    data = answer.to_dict()
    if args.json:
        emit(args, data, "")
        return exit_codes.OK
    if stream:
        print()  # the answer text was printed as it came (the backend's raw text)
        if "".join(streamed).strip() != answer.text.strip():
            print(f"checked (citations renumbered, invalid ones removed):\n{answer.text}")
    else:
        print(answer.text)
    for c in data.get("citations", []):
        print(f"  [{c['n']}] {c['citation']}")
    if data.get("invalid_citations"):
        print(f"  removed invalid citations: {data['invalid_citations']}")
    if data.get("unsupported"):
        print(f"  {len(data['unsupported'])} sentence(s) without a citation")
    return exit_codes.OK


def cmd_remove(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    with _engine(args, overrides) as eng:
        removed = eng.remove(args.paths, glob=args.glob)
    if removed:
        emit(args, {"removed": removed}, f"removed {removed} source(s)")
        return exit_codes.OK
    hint = "" if args.glob or not any(ch in p for p in args.paths for ch in "*?[") else " (use --glob to match patterns)"
    emit(args, {"removed": 0}, "nothing matched: no source of the store is "
         + ", ".join(printable(p) for p in args.paths) + " or under it" + hint)
    return exit_codes.STRICT if args.strict else exit_codes.OK


def cmd_stats(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    with _engine(args, overrides) as eng:
        stats = eng.stats()
    human = "\n".join(
        [f"store    {stats['store']}", f"sources  {stats['sources']} {stats['sources_by_status']}",
         f"items    {stats['items']} {stats['items_by_modality']}"]
        + [f"space    {n}: {s['vectors']} vectors, {s['index']} index, model {s['model']}" for n, s in stats["spaces"].items()]
        + [f"bm25     {stats['bm25_docs']} documents"]
        + [f"failed   {f['uri']}: {f['reason']}" for f in stats["failed"]]
    )
    emit(args, stats, human)
    return exit_codes.OK


def _store(args: argparse.Namespace, overrides: dict[str, Any]) -> Store:
    """The store alone (verify/repair need no model, so any store opens whatever it was built with)."""
    from retriever.config import Config

    config = Config.load(args.store, overrides)
    return Store(config.store, config, create=False)


def format_verify(report: dict[str, Any]) -> str:
    head = "ok" if report["ok"] else "INCONSISTENT"
    counts = report["counts"]
    lines = [(f"{head}: {report['errors']} error(s), {report['warnings']} warning(s) in {report['store']} "
              f"({counts.get('sources', 0)} sources, {counts.get('items', 0)} items)")]
    lines += [f"  {p['severity']:<7} {p['code']}: {p['message']}" for p in report["problems"]]
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    from retriever.maintenance.verify import verify

    store = _store(args, overrides)
    try:
        report = verify(store, check_files=not args.no_files, hash_all=args.hash).to_dict()
    finally:
        store.close()
    emit(args, report, format_verify(report))
    return exit_codes.OK if report["ok"] else exit_codes.INCONSISTENT


def cmd_repair(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    from retriever.maintenance.repair import repair

    store = _store(args, overrides)
    try:
        with store.write_lock(store.config.ingest.lock_wait_s):
            report = repair(store, check_files=not args.no_files).to_dict()
    finally:
        store.close()
    human = "\n".join([f"repaired {report['store']}"] + [f"  {a}" for a in report["actions"]]
                      + ["after: " + format_verify(report["after"])])
    emit(args, report, human)
    return exit_codes.OK if report["ok"] else exit_codes.INCONSISTENT


def cmd_eval(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    from pipelines.eval.harness import run_eval

    return run_eval(args, overrides, emit)


def cmd_serve(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    try:
        from pipelines.server.app import bind, run
    except ImportError as exc:
        raise MmragError(f"mmrag serve needs the server extra (pip install 'mmrag[server]'): {exc}") from None
    from pipelines.server.app import is_loopback

    if not 0 <= args.port <= 65535:
        raise MmragError(f"--port expects 0..65535, got {args.port}")
    require_keys = not (is_loopback(args.host) or args.insecure_no_auth)
    if require_keys and not store_has_keys(args, overrides):  # checked before anything listens
        raise MmragError(f"--host {args.host} is reachable from other machines and the store has no API key; "
                         "create one with `mmrag keys create --name NAME --scope read`, or pass "
                         "--insecure-no-auth to serve without authentication")
    sock = bind(args.host, args.port)  # before the store and models load: a busy port fails at once
    with sock, _engine(args, overrides, create=bool(args.allow_ingest)) as eng:
        run(eng, host=args.host, port=args.port, allow_ingest_under=[Path(d) for d in args.allow_ingest], sock=sock,
            require_keys=require_keys, cors_origins=args.cors_origin)
    return exit_codes.OK


def cmd_demo(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    from pipelines.cli.demo import run_demo

    result = run_demo(args, overrides, progress_ctx=_progress, format_hits=format_hits, format_report=format_report)
    if args.json:
        emit(args, result, "")
    return exit_codes.OK


COMMANDS: dict[str, Command] = {
    "ingest": cmd_ingest,
    "search": cmd_search,
    "ask": cmd_ask,
    "remove": cmd_remove,
    "stats": cmd_stats,
    "verify": cmd_verify,
    "repair": cmd_repair,
    "eval": cmd_eval,
    "serve": cmd_serve,
    "keys": cmd_keys,
    "demo": cmd_demo,
}
