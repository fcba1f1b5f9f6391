"""What else could lift hybrid text quality with MiniLM + BM25? Probes against today's fusion.

On the SciFact subset (``MMRAG_EVAL_DATA``), with a store built once by the product's own ingest,
each probe re-ranks the same queries and prints nDCG@10 and Recall@100 beside the default
(item-level RRF of the text space and BM25, ``search.rrf_k``). Where a probe has settings, the best
one is chosen on one half of the queries and scored on the other (2-fold, ``fold_of``), so the
cross-validated column is what a setting chosen this way would give on unseen queries.

    python bench/text_probes.py [--work DIR] [--windows]

Probes: dense pseudo-relevance feedback (Rocchio on the MiniLM vectors), fusing runs reduced to
documents, whole-document BM25, the document title in front of each chunk, late-chunked span
vectors (means over spans of each chunk's own MiniLM pass, no extra encoding), and with
``--windows`` sentence windows encoded on their own (about twice the corpus encoding time).
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.engine import Engine  # noqa: E402
from pipelines.eval.retrieval import item_documents, load_beir, write_corpus  # noqa: E402
from pipelines.eval.sweep import fold_of  # noqa: E402
from retriever.config import eval_data_dir  # noqa: E402
from retriever.fusion import rrf_fuse  # noqa: E402
from retriever.index.bm25 import tokenize  # noqa: E402
from retriever.metrics import ndcg_at_k, recall_at_k  # noqa: E402
from retriever.search import Query  # noqa: E402
from retriever.types import Space  # noqa: E402

DEPTH = 200
Ranking = dict[str, list[str]]  # query id -> document ids, best first
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


class Probe:
    """The store, its runs for every query, and the text vectors, loaded once."""

    def __init__(self, work: Path) -> None:
        self.ds = load_beir(eval_data_dir() / "retrieval" / "scifact_beir_subset")
        file_docs = write_corpus(self.ds, work / "corpus")
        self.engine = Engine.open(work / "store", overrides={"models.clip": "none"})
        t0 = time.perf_counter()
        report = self.engine.ingest([work / "corpus"])
        print(
            f"store: {report.added} added, {report.unchanged} unchanged in {time.perf_counter() - t0:.0f} s"
        )
        self.item_doc = item_documents(self.engine, file_docs)
        retriever = self.engine.retriever()
        self.engine.store.sync()
        self.k = self.engine.config.search.rrf_k
        self.qids = sorted(q for q, text in self.ds.queries.items() if text.strip())
        self.runs = {
            q: retriever.candidates(Query(text=self.ds.queries[q], k=DEPTH, runs=("text", "bm25")), DEPTH)
            for q in self.qids
        }
        encoder = self.engine.text_encoder
        self.qvec = {q: encoder.encode_texts([self.ds.queries[q]])[0] for q in self.qids}
        self.ids, self.vecs = self.engine.store.catalog.vectors(Space.TEXT, sorted(self.item_doc))
        self.items = self.engine.items()

    def docs(self, items: Sequence[int]) -> list[str]:
        return list(dict.fromkeys(self.item_doc[i] for i in items))

    def score(self, ranking: Ranking, qids: Sequence[str] | None = None) -> tuple[float, float]:
        qs = qids or self.qids
        qrels = self.ds.qrels
        return (
            float(np.mean([ndcg_at_k(ranking[q], qrels.get(q, {}), 10) for q in qs])),
            float(np.mean([recall_at_k(ranking[q], qrels.get(q, {}), 100) for q in qs])),
        )

    def fused(
        self,
        q: str,
        runs: Mapping[str, Sequence[Any]],
        weights: Mapping[str, float] | None = None,
        k: float | None = None,
    ) -> list[Any]:
        return [i for i, _ in rrf_fuse(runs, weights or {}, self.k if k is None else k)]

    def dense(self, matrix: np.ndarray, row_ids: np.ndarray, vec: np.ndarray) -> list[int]:
        """Items by their best row's cosine (an item may own several rows)."""
        sims = matrix @ vec
        best: dict[int, None] = {}
        for row in np.argsort(-sims):
            best.setdefault(int(row_ids[row]), None)
            if len(best) >= DEPTH:
                break
        return list(best)

    def with_dense(self, matrix: np.ndarray, row_ids: np.ndarray) -> Ranking:
        """Today's fusion with the text space run replaced by a search of ``matrix``."""
        return {
            q: self.docs(
                self.fused(
                    q, {"text": self.dense(matrix, row_ids, self.qvec[q]), "bm25": self.runs[q]["bm25"].ids}
                )
            )
            for q in self.qids
        }

    def cross_validated(self, grid: Mapping[str, Ranking]) -> float:
        folds = [[q for q in self.qids if fold_of(q) == f] for f in (0, 1)]
        held_out = 0.0
        for f in (0, 1):
            chosen = max(grid, key=lambda name: self.score(grid[name], folds[1 - f])[0])
            held_out += self.score(grid[chosen], folds[f])[0] * len(folds[f])
        return held_out / len(self.qids)


def baseline(p: Probe) -> Ranking:
    return {q: p.docs(p.fused(q, {n: r.ids for n, r in p.runs[q].items()})) for q in p.qids}


def prf_grid(p: Probe) -> dict[str, Ranking]:
    """Rocchio: query + b x mean of the top m fused items' vectors, searched again, fused with BM25."""
    row = {int(i): n for n, i in enumerate(p.ids)}
    top = {q: p.fused(q, {n: r.ids for n, r in p.runs[q].items()}) for q in p.qids}
    grid: dict[str, Ranking] = {}
    for m, b, keep in itertools.product((1, 2, 3, 5, 8), (0.25, 0.5, 1.0, 2.0), (False, True)):
        ranking: Ranking = {}
        for q in p.qids:
            vec = p.qvec[q] + b * p.vecs[[row[i] for i in top[q][:m]]].mean(axis=0)
            runs: dict[str, Sequence[int]] = {
                "prf": p.dense(p.vecs, p.ids, vec / np.linalg.norm(vec)),
                "bm25": p.runs[q]["bm25"].ids,
            }
            if keep:
                runs["text"] = p.runs[q]["text"].ids
            ranking[q] = p.docs(p.fused(q, runs))
        grid[f"m={m} b={b} keep={keep}"] = ranking
    return grid


def document_fusion_grid(p: Probe) -> dict[str, Ranking]:
    return {
        f"k={k}": {q: p.fused(q, {n: p.docs(r.ids) for n, r in p.runs[q].items()}, k=k) for q in p.qids}
        for k in (5, 10, 20, 60)
    }


def document_bm25_grid(p: Probe) -> dict[str, Ranking]:
    import bm25s

    doc_ids = sorted(p.ds.corpus)
    tokens = [tokenize(f"{p.ds.corpus[d][0]}\n\n{p.ds.corpus[d][1]}") for d in doc_ids]
    grid: dict[str, Ranking] = {}
    for k1, b in ((0.9, 0.4), (1.2, 0.75), (1.2, 0.9), (1.5, 0.75)):
        index = bm25s.BM25(k1=k1, b=b)
        index.index(tokens, show_progress=False)
        for k in (5, 10, 20):
            ranking: Ranking = {}
            for q in p.qids:
                hits, _ = index.retrieve([tokenize(p.ds.queries[q])], k=DEPTH, show_progress=False)
                ranking[q] = p.fused(
                    q, {"text": p.docs(p.runs[q]["text"].ids), "bm25": [doc_ids[i] for i in hits[0]]}, k=k
                )
            grid[f"k1={k1} b={b} k={k}"] = ranking
    return grid


def titled_chunks(p: Probe) -> tuple[np.ndarray, np.ndarray]:
    texts = []
    for i in p.ids:
        text, title = p.items[int(i)].text or "", p.ds.corpus[p.item_doc[int(i)]][0].strip()
        texts.append(f"{title}\n\n{text}" if title and not text.lstrip().startswith(title[:40]) else text)
    return p.engine.text_encoder.encode_texts(texts), p.ids


def late_spans(p: Probe, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The chunk vectors plus means over ``width``-token spans (stride width/2) of each chunk's own pass."""
    import torch

    model = p.engine.text_encoder._load().model  # the plain-transformers MiniLM (text_light)
    texts = [p.items[int(i)].text or "" for i in p.ids]
    rows, owners = [p.vecs], [p.ids]
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = texts[start : start + 64]
            feats = model.tokenizer(
                batch, padding=True, truncation=True, max_length=model.max_length, return_tensors="pt"
            )
            hidden = model.model(**feats).last_hidden_state.float()
            for r, n in enumerate(feats["attention_mask"].sum(dim=1).tolist()):
                tokens = hidden[r, 1 : n - 1]
                spans = [
                    tokens[a : a + width].mean(0)
                    for a in range(0, max(1, len(tokens) - width // 2), width // 2)
                ]
                rows.append(torch.nn.functional.normalize(torch.stack(spans), dim=-1).numpy())
                owners.append(np.full(len(spans), p.ids[start + r]))
    return np.concatenate(rows), np.concatenate(owners)


def sentence_windows(p: Probe) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """3-sentence windows, stride 2, title in front, encoded on their own; rows owned by documents."""
    texts, owners = [], []
    for d in sorted(p.ds.corpus):
        title, body = p.ds.corpus[d]
        sentences = [s for s in _SENTENCE.split(body.strip()) if s.strip()] or [""]
        for a in range(0, len(sentences), 2):
            texts.append(
                f"{title.strip()}. {' '.join(sentences[a : a + 3])}"
                if title.strip()
                else " ".join(sentences[a : a + 3])
            )
            owners.append(d)
    return p.engine.text_encoder.encode_texts(texts), np.arange(len(texts)), owners


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="keep the corpus and store here (default: a temporary folder)")
    ap.add_argument("--windows", action="store_true", help="also encode sentence windows (slow)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmrag-probes-") as tmp:
        p = Probe(args.work or Path(tmp))
        base = p.score(baseline(p))
        rows: list[tuple[str, tuple[float, float], float | None]] = [
            ("today's fusion (RRF of chunks + BM25)", base, None)
        ]

        def grid_row(name: str, make: Callable[[Probe], dict[str, Ranking]]) -> None:
            grid = make(p)
            best = max(grid, key=lambda g: p.score(grid[g])[0])
            rows.append((f"{name}, best: {best}", p.score(grid[best]), p.cross_validated(grid)))

        grid_row("dense pseudo-relevance feedback", prf_grid)
        grid_row("runs reduced to documents, then RRF", document_fusion_grid)
        grid_row("whole-document BM25", document_bm25_grid)
        for name, (matrix, owners) in (
            ("title in front of each chunk", titled_chunks(p)),
            ("late-chunked 48-token spans", late_spans(p, 48)),
        ):
            rows.append((name, p.score(p.with_dense(matrix, owners)), None))
        if args.windows:
            matrix, rows_of, owner_docs = sentence_windows(p)
            ranking = {
                q: p.fused(
                    q,
                    {
                        "text": list(
                            dict.fromkeys(owner_docs[int(r)] for r in p.dense(matrix, rows_of, p.qvec[q]))
                        ),
                        "bm25": p.docs(p.runs[q]["bm25"].ids),
                    },
                )
                for q in p.qids
            }
            rows.append(("sentence windows instead of chunks", p.score(ranking), None))
        p.engine.close()
    print(
        f"\nSciFact subset, {len(p.qids)} queries, MiniLM + BM25, RRF k={p.k:g}; nDCG@10 / Recall@100 "
        "(by retriever.metrics), cross-validated nDCG@10 where a setting was chosen:"
    )
    for name, (ndcg, recall), cv in rows:
        delta = f"{ndcg - base[0]:+.3f}"
        print(
            f"  {name:70s} {ndcg:.3f} ({delta}) / {recall:.3f}"
            + (f"   CV {cv:.3f}" if cv is not None else "")
        )


if __name__ == "__main__":
    main()
