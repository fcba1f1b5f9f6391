"""``mmrag eval retrieval --sweep``: settings re-fused through the product's fusion, and chosen by
cross-validation (``pipelines.eval.sweep``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.eval.retrieval import load_beir
from pipelines.eval.sweep import cross_validate, fold_of, setting_grid, sweep_fusion
from retriever.config import SearchConfig
from retriever.search import Retriever, Run


def _fuse(cfg: SearchConfig, runs: dict[str, Run]) -> list[tuple[int, float]]:
    return Retriever(None, None, None, cfg).fuse(runs)  # type: ignore[arg-type]  # text runs: no catalog needed


def test_folds_split_the_scifact_queries_evenly_and_stably(eval_dir: Path) -> None:
    ds = load_beir(eval_dir / "retrieval" / "scifact_beir_subset")
    folds = [fold_of(q) for q in ds.queries]
    assert 0.4 < sum(folds) / len(folds) < 0.6
    assert folds == [fold_of(q) for q in ds.queries]  # a hash of the id, not of the run


def test_the_grid_covers_both_fusions_at_each_depth() -> None:
    grid = setting_grid(SearchConfig(), [50, 100])
    assert {c.fusion for c in grid} == {"rrf", "score"} and {c.depth for c in grid} == {50, 100}
    assert {c.score_normalisation for c in grid if c.fusion == "score"} == {"minmax", "zscore"}
    assert {c.weight("bm25") for c in grid if c.fusion == "score"} == {0.5, 0.75, 1.0, 1.5}
    assert all(c.weight("text") == 1.0 for c in grid)


def _candidates() -> tuple[dict[str, dict[str, Run]], dict[int, str], dict[str, dict[str, int]]]:
    """Queries whose relevant document BM25 ranks first by a wide margin but the text space third."""
    cands, qrels = {}, {}
    for n in range(8):
        q = f"q{n}"
        cands[q] = {"bm25": Run([1, 2, 3, 4], {1: 20.0, 2: 5.0, 3: 4.9, 4: 1.0}),
                    "text": Run([2, 3, 1, 4, 5], {2: 0.61, 3: 0.605, 1: 0.60, 4: 0.2, 5: 0.1})}
        qrels[q] = {"d1": 1}
    return cands, {i: f"d{i}" for i in range(1, 6)}, qrels


def test_sweep_scores_each_setting_through_the_products_fusion() -> None:
    cands, item_doc, qrels = _candidates()
    grid = [SearchConfig(fusion="rrf", rrf_k=60, min_text_similarity=-1.0),
            SearchConfig(fusion="score", min_text_similarity=-1.0)]
    rows = sweep_fusion(cands, item_doc, qrels, _fuse, grid)
    by = {r["fusion"]: r for r in rows}
    # RRF sees ranks only: d2 (ranks 2 and 1) beats d1 (ranks 1 and 3); score fusion keeps BM25's margin
    assert by["score"]["ndcg"] == pytest.approx(1.0) and by["rrf"]["ndcg"] < 1.0
    assert rows[0]["fusion"] == "score" and set(by["rrf"]["per_query"]) == set(qrels)


def test_cross_validation_scores_each_pick_on_the_other_fold() -> None:
    # setting A is right on the fold-0 queries only, B on the fold-1 queries only
    queries = [f"q{n}" for n in range(40)]
    rows = [{"label": "A", "fusion": "rrf", "per_query": {q: (1.0 if fold_of(q) == 0 else 0.0, 1.0) for q in queries}},
            {"label": "B", "fusion": "score", "per_query": {q: (1.0 if fold_of(q) == 1 else 0.0, 0.5)
                                                           for q in queries}}]
    cv = cross_validate(rows)
    # a setting picked on one fold is wrong on the other: cross-validation reports 0, not 1
    assert cv["any"]["ndcg"] == 0.0 and cv["any"]["picks"] == ["B", "A"]
    assert cv["rrf"]["ndcg"] == pytest.approx(sum(fold_of(q) == 0 for q in queries) / 40)
    assert cv["score"]["recall"] == pytest.approx(0.5)
