"""The ``mmrag`` command line.

``--json`` prints exactly one JSON document on stdout and nothing else (progress
and logs go to stderr). Exit codes (``pipelines.cli.exit_codes``):

* 0 success, also when some files failed to ingest (they are reported);
* 1 ``verify``/``repair`` found the store inconsistent, or an unexpected failure
  (with its traceback);
* 2 usage or input error: a bad command line, a missing input path, no store at
  ``--store`` for a reading command, a bad setting, a store or model error, any
  ``MmragError``;
* 3 with ``--strict``: some files failed (``ingest``) or nothing matched (``remove``);
* 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pipelines.cli import exit_codes
from retriever.errors import MmragError

__all__ = ["build_parser", "main"]

LLM_HELP = ("answering model: extractive (offline default) | openai:MODEL | ollama:MODEL | "
            "llamacpp[:GGUF] (the llamacpp extra)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors exit 2 with the usage line
        self.print_usage(sys.stderr)
        self.exit(exit_codes.USAGE, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser, json_output: bool = True,
            store_help: str = "store directory (default: $MMRAG_STORE or ./mmrag-store)") -> None:
    p.add_argument("--store", help=store_help)
    p.add_argument("--clip-model", help="CLIP spec, e.g. ViT-B-32@laion2b_s34b_b79k or ViT-B-32@/path/weights.pt; 'none' disables")
    p.add_argument("--text-model", help="sentence-transformers model name or local directory")
    p.add_argument("--catalog-url", help="SQLAlchemy URL of the catalog (default: SQLite in the store)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. search.rrf_k=40")
    p.add_argument("-v", "--verbose", action="count", default=0, help="show library logs: -v INFO, -vv DEBUG")
    if json_output:
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout and nothing else")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmrag", description="Multimodal retrieval and RAG over images, PDFs, audio and video.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_ingest, _add_search, _add_ask, _add_remove, _add_maintenance, _add_eval, _add_serve, _add_keys,
                _add_demo):
        add(sub)
    return parser


def _add_ingest(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("ingest", help="ingest files and directories (recursively); creates the store if needed")
    p.add_argument("paths", nargs="+", metavar="PATH", help="file or directory to ingest (must exist)")
    p.add_argument("--include", action="append", default=[], help="glob of files to include (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob of files to exclude (repeatable)")
    p.add_argument("--prune", action="store_true", help="remove sources under PATHS whose files are gone")
    p.add_argument("--strict", action="store_true", help="exit 3 if any file failed")
    p.add_argument("--pdf-password", action="append", default=[], help="password to try on encrypted PDFs (repeatable)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="decode and encode on a Ray cluster (HEAD:6379, or 'auto'); without ADDRESS, on a local "
                        "one started for the run (the ray extra). Give it after the paths, or as --ray=ADDRESS")
    _common(p)


def _add_search(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("search", help="search with text, an image and/or an audio clip")
    p.add_argument("text", nargs="?", default=None, help="query text (optional with --image or --audio)")
    p.add_argument("--image", help="query image file")
    p.add_argument("--audio", help="query audio clip (its speech becomes the query text)")
    p.add_argument("-k", "--k", type=int, default=None, help="number of results (default: search.k, 10)")
    p.add_argument("--modality", action="append", default=[], help="text|image|pdf|audio|video (repeatable)")
    p.add_argument("--source", help="glob on the source path")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="metadata equality filter")
    p.add_argument("--mmr", action="store_true", help="drop near-duplicates (maximal marginal relevance)")
    _common(p)


def _add_ask(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("ask", help="answer a question from the indexed evidence, with citations")
    p.add_argument("question", help="the question to answer")
    p.add_argument("-k", "--k", type=int, default=8, help="evidence items to retrieve (default: 8)")
    p.add_argument("--llm", help=LLM_HELP)
    p.add_argument("--modality", action="append", default=[],
                   help="only use evidence of this modality: text|image|pdf|audio|video (repeatable)")
    p.add_argument("--no-stream", action="store_true", help="print the answer when complete instead of as it comes")
    _common(p)


def _add_remove(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("remove", help="remove sources (a file, everything under a directory, or --glob patterns)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="source file or directory as ingested (or a pattern with --glob)")
    p.add_argument("--glob", action="store_true", help="treat PATHs as glob patterns (e.g. '*/2023/*.pdf')")
    p.add_argument("--strict", action="store_true", help="exit 3 if nothing matched")
    _common(p)


def _add_maintenance(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("stats", help="what the store holds")
    _common(p)

    p = sub.add_parser("verify", help="check catalog <-> indexes <-> files; exit 1 if the store is inconsistent")
    p.add_argument("--no-files", action="store_true", help="skip checking the source files for changes")
    p.add_argument("--hash", action="store_true", help="hash every source file (default: only when size/mtime differ)")
    _common(p)

    p = sub.add_parser("repair", help="rebuild indexes from the catalog's vectors and fix what verify found")
    p.add_argument("--no-files", action="store_true", help="skip checking the source files for changes")
    _common(p)


def _add_eval(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("eval", help="measure retrieval, speech recognition, caption retrieval or answers")
    tasks = p.add_subparsers(dest="eval_task", required=True, parser_class=_Parser)
    t = tasks.add_parser("retrieval", help="BEIR folder: nDCG@10, Recall@100, MRR@10 per space and fused")
    t.add_argument("dir", help="folder with corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    t.add_argument("--split", default="test", help="qrels split to score (default: test)")
    t.add_argument("--sweep", action="store_true", help="also score a grid of fusion settings (RRF k, depth, weights)")
    t = tasks.add_parser("asr", help="word error rate of the speech model on clips with reference transcripts")
    t.add_argument("dir", help="folder of audio clips")
    t.add_argument("--transcripts", help="JSON file -> reference (default: DIR/transcripts.json)")
    t = tasks.add_parser("captions", help="text->image and image->text Recall@1/5/10 of the CLIP model")
    t.add_argument("dir", help="folder of images")
    t.add_argument("--captions", help="JSON image file -> list of captions (default: DIR/captions.json)")
    t = tasks.add_parser("answers", help="share of answers citing the expected evidence; citation validity")
    t.add_argument("file", help="JSON/JSONL questions with expected evidence locators")
    t.add_argument("-k", "--k", type=int, default=8, help="evidence items per question (default: 8)")
    t.add_argument("--llm", help=LLM_HELP)
    for t in tasks.choices.values():
        t.add_argument("--out", help="write the results JSON here")
        t.add_argument("--compare", metavar="RESULTS.json", help="print the changes against an earlier results file")
        _common(t)


def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("serve", help="serve search, ask and the evidence over HTTP (FastAPI + uvicorn)",
                       description="Serve search, ask and the evidence over HTTP. Request limits are the server.* "
                                   "settings ([server] in mmrag.toml, or e.g. --set server.requests_per_minute=1200 "
                                   "--set server.max_k=100).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--allow-ingest", action="extend", nargs="+", default=[], metavar="DIR",
                   help="allow POST /ingest of files under DIR (repeatable); ingest is off without it")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. https://intranet.example:8443, or '*') call the API "
                        "from a browser (repeatable; off by default)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="serve a non-loopback --host without API keys (anyone who reaches it can read the store)")
    _common(p, json_output=False)


def _add_keys(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("keys", help="API keys of `mmrag serve`: create, list, revoke")
    actions = p.add_subparsers(dest="keys_action", required=True, parser_class=_Parser)
    a = actions.add_parser("create", help="create a key and print it (once: only its hash is stored)")
    a.add_argument("--name", required=True, help="a name for the key (unique among keys in use)")
    a.add_argument("--scope", required=True, choices=("read", "ingest", "admin"),
                   help="read: search, ask, items, stats; ingest: read and POST /ingest; admin: everything")
    a = actions.add_parser("list", help="every key: name, scope, id, created, last used, revoked")
    a = actions.add_parser("revoke", help="revoke a key by name or id; it stops working at once")
    a.add_argument("key", metavar="NAME|ID", help="the key's name or id (as `mmrag keys list` shows)")
    for a in actions.choices.values():
        _common(a)


def _add_demo(sub: argparse._SubParsersAction[_Parser]) -> None:
    from pipelines.cli.demo import DATA_HELP, STORE_HELP

    p = sub.add_parser("demo", help="build the sample corpus in data/, ingest it into the demo's own store, "
                                     "search and ask (offline)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    _common(p, store_help=STORE_HELP)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.clip_model:
        out["models.clip"] = args.clip_model
    if args.text_model:
        out["models.text"] = args.text_model
    if args.catalog_url:
        out["catalog_url"] = args.catalog_url
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise MmragError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    if getattr(args, "include", None):
        out["ingest.include"] = tuple(args.include)
    if getattr(args, "exclude", None):
        out["ingest.exclude"] = tuple(args.exclude)
    if getattr(args, "pdf_password", None):
        out["pdf.passwords"] = tuple(args.pdf_password)
    if getattr(args, "llm", None):
        out["llm.spec"] = args.llm
    return out


def _emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
    else:
        print(human)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipelines.cli.logs import setup_logging

    setup_logging(getattr(args, "verbose", 0))
    from pipelines.cli.commands import COMMANDS

    try:
        return COMMANDS[args.command](args, _overrides(args), _emit)
    except MmragError as exc:
        print(f"mmrag: error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:
        print("mmrag: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
