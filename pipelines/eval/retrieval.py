"""``mmrag eval retrieval``: a BEIR folder through the product, each space alone and fused.

The corpus is written as one ``<doc id>.txt`` file per document (title, blank line,
text) and ingested through the normal pipeline, so documents are chunked like any
text file; a document's rank is the rank of its best chunk (max-passage). Each
query's candidates are taken once per run with ``Retriever.candidates``, as deep as a search for
about ``recall_k`` documents goes (``k`` items: ``recall_k`` x items per document), then ranked

* per run alone (``bm25``, ``text``, ``clip_text`` when the store has a CLIP space), and
* fused with the store's settings (``Retriever.fuse``): for nDCG and MRR the list
  ``Engine.search(text=q, k=ndcg_k)`` returns (its candidates cut to that search's depth), for
  recall the list ``Engine.search(text=q, k=k)`` returns; the tests check both.

Items of other sources in a given ``--store`` stay in the rankings as non-relevant
entries: what outranks the corpus in the product outranks it here too.

``--sweep`` re-fuses the cached candidates over a grid of fusion settings (``pipelines.eval.sweep``:
RRF constants, score normalisations, BM25 weights, per-run depths) and picks among them by 2-fold
cross-validation over the queries, to set the defaults from measurement.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexers.ingest.pipeline import IngestReport
from pipelines.engine import Engine
from pipelines.eval.sweep import cross_validate, setting_grid, sweep_fusion
from pipelines.eval.results import (
    Advance,
    EvalDataError,
    EvalResult,
    ProgressFactory,
    dataset_fingerprint,
    format_table,
    no_advance,
    no_progress,
)
from retriever.metrics import mean_retrieval_scores
from retriever.search import Query, Retriever, Run

__all__ = [
    "FUSED",
    "BeirDataset",
    "collect_candidates",
    "evaluate_retrieval",
    "item_documents",
    "load_beir",
    "write_corpus",
]

FUSED = "fused"
FUSED_DEEP = "fused@recall"  # fused over the candidates of a search deep enough for recall_k documents
TEXT_RUNS = ("bm25", "text", "clip_text")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

    root: Path
    split: str
    corpus: Mapping[str, tuple[str, str]]  # doc id -> (title, text)
    queries: Mapping[str, str]  # judged queries only, in file order
    qrels: Mapping[str, Mapping[str, int]]
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.root.name

    def fingerprint(self) -> str:
        return dataset_fingerprint(self.files, self.root)


def _jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise EvalDataError(f"BEIR folder {path.parent} has no {path.name}")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise EvalDataError(f"{path}:{n}: not a JSON line ({exc})") from None
            if not isinstance(row, dict) or "_id" not in row:
                raise EvalDataError(f"{path}:{n}: expected an object with '_id', got {line[:80]!r}")
            yield n, row


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if not line.strip() or (n == 1 and not parts[-1].strip().lstrip("-").isdigit()):
                continue  # blank line or the "query-id corpus-id score" header
            if len(parts) < 3:
                raise EvalDataError(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {line.strip()!r}")
            try:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[-1])
            except ValueError:
                raise EvalDataError(f"{path}:{n}: relevance {parts[-1]!r} is not an integer") from None
    return qrels


def load_beir(root: str | Path, split: str = "test") -> BeirDataset:
    """Read a BEIR folder; only queries with a relevant document in ``split`` are kept."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise EvalDataError(f"BEIR folder not found: {root}")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise EvalDataError(f"no qrels/{split}.tsv in {root}; splits present: {', '.join(have) or 'none'}")
    corpus = {str(r["_id"]): (str(r.get("title") or ""), str(r.get("text") or "")) for _, r in _jsonl(root / "corpus.jsonl")}
    all_queries = {str(r["_id"]): str(r.get("text") or "") for _, r in _jsonl(root / "queries.jsonl")}
    qrels = {q: rels for q, rels in _read_qrels(qrels_path).items() if any(v > 0 for v in rels.values())}
    missing_q = sorted(set(qrels) - set(all_queries))
    if missing_q:
        raise EvalDataError(f"qrels/{split}.tsv judges {len(missing_q)} queries not in queries.jsonl, e.g. {missing_q[:3]}")
    unknown = sorted({d for rels in qrels.values() for d, v in rels.items() if v > 0} - set(corpus))
    if unknown:
        raise EvalDataError(f"qrels/{split}.tsv marks {len(unknown)} documents relevant that corpus.jsonl lacks, "
                            f"e.g. {unknown[:3]}")
    if not qrels:
        raise EvalDataError(f"qrels/{split}.tsv in {root} has no relevant (score > 0) pair")
    queries = {q: t for q, t in all_queries.items() if q in qrels}
    files = (root / "corpus.jsonl", root / "queries.jsonl", qrels_path)
    return BeirDataset(root, split, corpus, queries, qrels, files)


def _file_name(doc_id: str) -> str:
    if _SAFE_ID.match(doc_id) and not doc_id.startswith("doc-"):
        return f"{doc_id}.txt"
    return f"doc-{hashlib.blake2b(doc_id.encode(), digest_size=10).hexdigest()}.txt"


def write_corpus(ds: BeirDataset, out_dir: Path) -> dict[str, str]:
    """One text file per document (rewritten only when it changed); absolute path -> doc id."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for doc_id, (title, text) in ds.corpus.items():
        path = out_dir / _file_name(doc_id)
        body = f"{title.strip()}\n\n{text.strip()}\n" if title.strip() else f"{text.strip()}\n"
        if not body.strip():
            body = f"(empty document {doc_id})\n"  # keep every doc a source, so ids stay aligned
        if str(path) in paths:
            raise EvalDataError(f"documents {paths[str(path)]!r} and {doc_id!r} map to one file name {path.name}")
        data = body.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        paths[str(path)] = doc_id
    return paths


def item_documents(engine: Engine, file_docs: Mapping[str, str]) -> dict[int, str]:
    """Item id -> doc id for every stored item whose source is a corpus file."""
    return {iid: file_docs[rec.source_uri] for iid, rec in engine.items().items() if rec.source_uri in file_docs}


def collect_candidates(
    engine: Engine, queries: Mapping[str, str], depth: int, advance: Advance = no_advance
) -> dict[str, dict[str, Run]]:
    """Per query, each text run's top ``depth`` candidates (the query is encoded once per space)."""
    retriever = engine.retriever()
    engine.store.sync()
    out: dict[str, dict[str, Run]] = {}
    for qid, text in queries.items():
        out[qid] = retriever.candidates(Query(text=text, k=depth, runs=TEXT_RUNS), depth) if text.strip() else {}
        advance(1)
    return out


def _docs(ids: Sequence[int], item_doc: Mapping[int, str]) -> list[str]:
    """Item ranking -> document ranking; items from outside the corpus stay as non-relevant entries."""
    return list(dict.fromkeys(item_doc.get(i, f"~item:{i}") for i in ids))


def rankings(
    cands: Mapping[str, Mapping[str, Run]],
    item_doc: Mapping[int, str],
    fuse: Callable[[Mapping[str, Run]], list[tuple[int, float]]],
    shallow: int | None = None,
) -> dict[str, dict[str, list[str]]]:
    """``{configuration: {query: ranked doc ids}}`` for each run alone and fused; with ``shallow``,
    also ``FUSED_DEEP``: ``FUSED`` then fuses each run's top ``shallow`` only (a search for fewer
    results), ``FUSED_DEEP`` all of them."""
    names = sorted({n for runs in cands.values() for n in runs}, key=lambda n: TEXT_RUNS.index(n))
    out: dict[str, dict[str, list[str]]] = {n: {} for n in [*names, FUSED, *([FUSED_DEEP] if shallow else [])]}
    for qid, runs in cands.items():
        for name in names:
            out[name][qid] = _docs(runs[name].ids, item_doc) if name in runs else []
        out[FUSED][qid] = _docs([i for i, _ in fuse(_cut(runs, shallow))], item_doc) if runs else []
        if shallow:
            out[FUSED_DEEP][qid] = _docs([i for i, _ in fuse(runs)], item_doc) if runs else []
    return out


def _cut(runs: Mapping[str, Run], depth: int | None) -> Mapping[str, Run]:
    if depth is None:
        return runs
    return {n: Run(r.ids[:depth], {i: r.scores[i] for i in r.ids[:depth]}) for n, r in runs.items()}


def evaluate_retrieval(
    engine: Engine,
    ds: BeirDataset,
    corpus_dir: Path,
    *,
    ndcg_k: int = 10,
    recall_k: int = 100,
    mrr_k: int = 10,
    sweep: bool = False,
    progress: ProgressFactory = no_progress,
) -> EvalResult:
    """Ingest ``ds`` into ``engine``'s store (a no-op when unchanged) and score every configuration."""
    t0 = time.perf_counter()
    file_docs = write_corpus(ds, corpus_dir)
    report = _ingest(engine, corpus_dir, progress("ingest", len(file_docs)))
    failed = [f"{file_docs.get(str(Path(path).resolve()), path)}: {reason}" for path, reason in report.failed]
    t_ingest = time.perf_counter() - t0
    item_doc = item_documents(engine, file_docs)
    per_doc = len(item_doc) / max(1, len(file_docs))
    search = engine.config.search
    results = max(recall_k, math.ceil(recall_k * per_doc))  # items for about recall_k documents
    depth, shallow = search.candidates(results), search.candidates(max(ndcg_k, mrr_k))
    t1 = time.perf_counter()
    with progress("queries", len(ds.queries)) as advance:
        cands = collect_candidates(engine, ds.queries, depth, advance)
    t_query = time.perf_counter() - t1
    ranked = rankings(cands, item_doc, engine.retriever().fuse, shallow)
    metrics = {name: mean_retrieval_scores(r, ds.qrels, ndcg_k, recall_k, mrr_k) for name, r in ranked.items()}
    deep = metrics.pop(FUSED_DEEP)
    metrics[FUSED][f"recall@{recall_k}"] = deep[f"recall@{recall_k}"]
    del ranked[FUSED_DEEP]
    sweep_rows, cv = _sweep(engine, cands, item_doc, ds, depth, ndcg_k, recall_k) if sweep else ([], {})
    missing = len(set(file_docs.values()) - set(item_doc.values()))
    notes = _notes(engine, failed, missing, metrics)
    return EvalResult(
        task="retrieval",
        dataset={"name": ds.name, "path": str(ds.root), "split": ds.split, "fingerprint": ds.fingerprint(),
                 "documents": len(ds.corpus), "queries": len(ds.queries),
                 "ingest": {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
                            "failed": len(report.failed)}},
        settings={**_settings(engine), "candidates_per_run": depth, "results_for_recall": results,
                  "candidates_for_ndcg": shallow, "items": len(item_doc), "items_per_document": round(per_doc, 3)},
        models=_models(engine),
        metrics=metrics,
        rows=_query_rows(ranked, ds, ndcg_k) + [{"sweep": {k: v for k, v in r.items() if k != "per_query"}}
                                                for r in sweep_rows] + ([{"cross_validation": cv}] if cv else []),
        notes=notes,
        seconds={"ingest": t_ingest, "queries": t_query, "per_query_ms": 1000 * t_query / max(1, len(ds.queries))},
        table=_table(ds, metrics, depth, len(item_doc), ndcg_k, recall_k, mrr_k, sweep_rows, notes, cv),
    )


def _sweep(engine: Engine, cands: Mapping[str, Mapping[str, Run]], item_doc: Mapping[int, str], ds: BeirDataset,
           depth: int, ndcg_k: int, recall_k: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every setting of the grid re-fused over ``cands``, and the 2-fold cross-validated choices."""
    def fuse(cfg: Any, runs: Mapping[str, Run]) -> list[tuple[int, float]]:
        return Retriever(engine.store, None, None, cfg).fuse(runs)

    depths = sorted({d for d in (50, 100, 200) if d <= depth} | {depth})
    rows = sweep_fusion(cands, item_doc, ds.qrels, fuse, setting_grid(engine.config.search, depths),
                        ndcg_k=ndcg_k, recall_k=recall_k)
    return rows, cross_validate(rows)


def _ingest(engine: Engine, corpus_dir: Path, progress: AbstractContextManager[Advance]) -> IngestReport:
    """Ingest the corpus folder, advancing ``progress`` by the files finished."""
    with progress as advance:
        done = 0

        def tick(_label: str, finished: int, _total: int) -> None:
            nonlocal done
            advance(finished - done)
            done = finished

        return engine.ingest([corpus_dir], progress=tick)


def _notes(engine: Engine, failed: Sequence[str], missing: int, metrics: Mapping[str, Any]) -> list[str]:
    """What a reader of the numbers should know: documents that did not make it, runs that found nothing."""
    notes = [f"ingest failed for document {f} (counted as never retrieved)" for f in failed]
    if "clip" in engine.space_models() and "clip_text" not in metrics:
        notes.append("the CLIP text run returned nothing: with search.clip_text_scope='visual' it ranks only "
                     "items with an image, and this corpus has none")
    if len(failed) < missing:
        notes.append(f"{missing - len(failed)} documents have no stored item (blank text?)")
    return notes


def _settings(engine: Engine) -> dict[str, Any]:
    search, ingest = engine.config.search, engine.config.ingest
    return {"search": {"depth": search.depth, "depth_per_k": search.depth_per_k, "fusion": search.fusion,
                       "score_normalisation": search.score_normalisation, "rrf_k": search.rrf_k,
                       "weights": dict(search.weights), "clip_text_scope": search.clip_text_scope,
                       "min_text_similarity": search.min_text_similarity},
            "ingest": {"chunk_chars": ingest.chunk_chars, "chunk_overlap": ingest.chunk_overlap}}


def _models(engine: Engine) -> dict[str, Any]:
    out: dict[str, Any] = dict(engine.space_models())
    out["bm25"] = "bm25s:" + str(engine.store.manifest.get("spaces", {}).get("bm25", {}).get("tokenizer", "?"))
    return out


def _query_rows(ranked: Mapping[str, Mapping[str, list[str]]], ds: BeirDataset, k: int) -> list[dict[str, Any]]:
    from retriever.metrics import ndcg_at_k

    rows = []
    for qid in ds.queries:
        row: dict[str, Any] = {"query": qid}
        for name, per_q in ranked.items():
            row[name] = ndcg_at_k(per_q.get(qid, []), ds.qrels[qid], k)
        rows.append(row)
    return rows


def _table(ds: BeirDataset, metrics: Mapping[str, Mapping[str, float]], depth: int, items: int,
           ndcg_k: int, recall_k: int, mrr_k: int, sweep_rows: Sequence[Mapping[str, Any]],
           notes: Sequence[str] = (), cv: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    cols = [f"ndcg@{ndcg_k}", f"recall@{recall_k}", f"mrr@{mrr_k}"]
    head = (f"{ds.name} ({ds.split}): {len(ds.corpus)} documents as {items} items, {len(ds.queries)} queries, "
            f"{depth} candidates per run")
    table = format_table(["run", f"nDCG@{ndcg_k}", f"Recall@{recall_k}", f"MRR@{mrr_k}"],
                         [[name, *(m[c] for c in cols)] for name, m in metrics.items()])
    best_single = max((m[cols[0]] for n, m in metrics.items() if n != FUSED), default=0.0)
    verdict = (f"fused nDCG@{ndcg_k} {metrics[FUSED][cols[0]]:.4f} vs best single space {best_single:.4f}: "
               + ("fused is at least as good" if metrics[FUSED][cols[0]] >= best_single else "FUSED IS WORSE"))
    parts = [head, table, verdict, *(f"note: {n}" for n in notes)]
    if sweep_rows:
        parts.append("fusion sweep over all queries (best first; chosen on the queries it is scored on):")
        parts.append(format_table(["setting", f"nDCG@{ndcg_k}", f"Recall@{recall_k}"],
                                  [[r["label"], r["ndcg"], r["recall"]] for r in sweep_rows[:15]]))
    if cv:
        parts.append("2-fold cross-validation (pick on one half of the queries, score on the other):")
        parts.append(format_table(["family", f"nDCG@{ndcg_k}", f"Recall@{recall_k}", "picked (fold 0 | fold 1)"],
                                  [[f, c["ndcg"], c["recall"], " | ".join(c["picks"])] for f, c in cv.items()]))
    return "\n".join(parts)
