"""Fusion without models or a store on disk: RRF, score fusion and its normalisations, the
modality-balance scaling, the text-similarity floor and MMR, on a store stand-in that answers the
two catalog questions fusion asks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from retriever.config import SearchConfig
from retriever.errors import ConfigError
from retriever.fusion import fuse, normalise, score_fuse
from retriever.search import RUN_SPACES, Retriever, Run, rrf_fuse
from retriever.types import RunName, Space


class FakeCatalog:
    def __init__(self, spaces: dict[str, set[int]], vectors: dict[str, dict[int, np.ndarray]]) -> None:
        self._spaces, self._vectors = spaces, vectors

    def spaces_of(self, ids: Sequence[int], spaces: Sequence[str]) -> dict[str, set[int]]:
        return {s: self._spaces.get(s, set()) & set(ids) for s in spaces}

    def vectors(self, space: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = self._vectors.get(space, {})
        got = [i for i in ids if i in rows]
        vecs = np.stack([rows[i] for i in got]) if got else np.zeros((0, 2), np.float32)
        return np.asarray(got, dtype=np.int64), vecs


class FakeStore:
    def __init__(self, catalog: FakeCatalog) -> None:
        self.catalog = catalog

    def space(self, name: str) -> Any:
        return object() if name in self.catalog._vectors else None


def _retriever(config: SearchConfig, spaces: dict[str, set[int]] | None = None,
               vectors: dict[str, dict[int, np.ndarray]] | None = None) -> Retriever:
    store = FakeStore(FakeCatalog(spaces or {}, vectors or {}))
    return Retriever(store, None, None, config)  # type: ignore[arg-type]


def _run(ids: list[int], scores: list[float] | None = None) -> Run:
    scores = scores if scores is not None else [1.0 - 0.01 * n for n in range(len(ids))]
    return Run(ids, dict(zip(ids, scores)))


# ---- RRF -------------------------------------------------------------------------------


def test_rrf_sums_reciprocal_ranks() -> None:
    fused = dict(rrf_fuse({"a": [1, 2, 3], "b": [3, 1]}, {}, rrf_k=10))
    assert fused[1] == pytest.approx(1 / 11 + 1 / 12) and fused[3] == pytest.approx(1 / 13 + 1 / 11)
    assert fused[2] == pytest.approx(1 / 12)


def test_rrf_weights_and_zero_weight_runs() -> None:
    fused = rrf_fuse({"a": [1], "b": [2], "c": [3]}, {"a": 2.0, "c": 0.0}, rrf_k=0)
    assert fused == [(1, 2.0), (2, 1.0)]  # c does not count; b has the default weight 1


def test_rrf_ties_are_broken_by_id() -> None:
    assert [i for i, _ in rrf_fuse({"a": [9, 4], "b": [4, 9]}, {}, rrf_k=20)] == [4, 9]
    assert rrf_fuse({}, {}, rrf_k=20) == []


# ---- modality balance ------------------------------------------------------------------


def _mixed_runs() -> dict[str, Run]:
    # text items 1-3 are found by the text space and BM25; image 10 by CLIP alone
    return {RunName.CLIP_TEXT: _run([10]), RunName.TEXT: _run([1, 2, 3], [0.5, 0.4, 0.3]), RunName.BM25: _run([1, 2])}


MEMBERS = {Space.CLIP: {10}, Space.TEXT: {1, 2, 3}}


def test_plain_rrf_when_balance_is_zero() -> None:
    r = _retriever(SearchConfig(fusion="rrf", rrf_k=20, modality_balance=0.0), MEMBERS)
    fused = r.fuse(_mixed_runs())
    assert fused == rrf_fuse({n: run.ids for n, run in _mixed_runs().items()}, {}, 20)
    assert [i for i, _ in fused][:2] == [1, 2]  # the photo trails two agreeing runs


@pytest.mark.parametrize("balance", [0.25, 0.6, 1.0])
def test_balance_scales_by_the_runs_that_could_find_an_item(balance: float) -> None:
    r = _retriever(SearchConfig(fusion="rrf", modality_balance=balance, rrf_k=20), MEMBERS)
    fused = dict(r.fuse(_mixed_runs()))
    plain = dict(rrf_fuse({n: run.ids for n, run in _mixed_runs().items()}, {}, 20))
    # 3 runs found something; an image is reachable by 1 of them, a text item by 2
    assert fused[10] == pytest.approx(plain[10] * 3.0 ** balance)
    assert fused[1] == pytest.approx(plain[1] * 1.5 ** balance)


def test_balance_one_lets_the_best_image_match_the_best_text() -> None:
    fused = dict(_retriever(SearchConfig(fusion="rrf", modality_balance=1.0, rrf_k=20), MEMBERS).fuse(
        {RunName.CLIP_TEXT: _run([10]), RunName.TEXT: _run([1]), RunName.BM25: _run([1])}))
    assert fused[10] == pytest.approx(fused[1])


def test_no_scaling_when_every_run_covers_every_item() -> None:
    runs = {RunName.TEXT: _run([1, 2]), RunName.BM25: _run([2, 1])}  # a text-only store
    r = _retriever(SearchConfig(fusion="rrf", rrf_k=20, modality_balance=1.0), MEMBERS)
    assert r.fuse(runs) == rrf_fuse({n: run.ids for n, run in runs.items()}, {}, 20)
    scoped = _retriever(SearchConfig(fusion="rrf", rrf_k=20, modality_balance=1.0, clip_text_scope="all"), MEMBERS)
    assert scoped.fuse(_mixed_runs()) == rrf_fuse({n: run.ids for n, run in _mixed_runs().items()}, {}, 20)


def test_text_candidates_below_the_similarity_floor_do_not_count() -> None:
    runs = {RunName.TEXT: _run([1, 2, 3], [0.5, 0.15, 0.1])}
    assert [i for i, _ in _retriever(SearchConfig(min_text_similarity=0.2)).fuse(runs)] == [1]
    assert [i for i, _ in _retriever(SearchConfig(min_text_similarity=-1.0)).fuse(runs)] == [1, 2, 3]
    bm25 = {RunName.BM25: _run([1, 2], [0.05, 0.01])}  # the floor is for the text space only
    assert [i for i, _ in _retriever(SearchConfig(min_text_similarity=0.9)).fuse(bm25)] == [1, 2]


# ---- score fusion ------------------------------------------------------------------------


def test_normalisations_by_hand() -> None:
    assert normalise([4.0, 2.0, 1.0]) == pytest.approx([1.0, 1 / 3, 0.0])
    # z-score, shifted so the worst returned item is 0 (an item a run did not return counts 0)
    sd = np.std([4.0, 2.0, 1.0])
    assert normalise([4.0, 2.0, 1.0], "zscore") == pytest.approx([3 / sd, 1 / sd, 0.0])
    assert normalise([0.3, 0.3]) == [1.0, 1.0] and normalise([]) == []
    with pytest.raises(ValueError, match="unknown normalisation 'rank'"):
        normalise([1.0, 0.0], "rank")  # type: ignore[arg-type]


def test_score_fusion_sums_weighted_normalised_scores() -> None:
    runs = {"text": [(1, 0.9), (2, 0.5), (3, 0.4)], "bm25": [(3, 12.0), (1, 2.0)]}
    fused = dict(score_fuse(runs, {}))
    # text: 1 -> 1, 2 -> 0.2, 3 -> 0; bm25: 3 -> 1, 1 -> 0
    assert fused == pytest.approx({1: 1.0, 3: 1.0, 2: 0.2})
    assert [i for i, _ in score_fuse(runs, {})] == [1, 3, 2]  # the tie of 1 and 3 is broken by id
    assert dict(score_fuse(runs, {"bm25": 2.0}))[3] == pytest.approx(2.0)
    assert dict(score_fuse(runs, {"bm25": 0.0})) == pytest.approx({1: 1.0, 2: 0.2, 3: 0.0})


def test_score_fusion_keeps_the_margins_rrf_throws_away() -> None:
    # BM25 is sure of item 7 and barely prefers 8 over 9; the text space mildly prefers 9
    runs = {"bm25": [(7, 30.0), (8, 10.1), (9, 10.0)], "text": [(9, 0.52), (7, 0.5), (8, 0.2)]}
    by_rank = [i for i, _ in fuse(runs, {}, "rrf", rrf_k=20)]
    by_score = [i for i, _ in fuse(runs, {}, "score")]
    assert by_score[0] == 7 and by_rank[0] == 7
    assert by_score.index(9) < by_score.index(8)  # 9's text margin outweighs 8's 0.1 BM25 lead
    with pytest.raises(ValueError, match="unknown fusion 'max'"):
        fuse(runs, {}, "max")  # type: ignore[arg-type]


def test_retriever_fuses_by_the_configured_method() -> None:
    runs = {RunName.TEXT: _run([1, 2, 3], [0.9, 0.85, 0.3]), RunName.BM25: _run([3, 2], [9.0, 1.0])}
    pairs = {n: [(i, r.scores[i]) for i in r.ids] for n, r in runs.items()}
    assert _retriever(SearchConfig(fusion="score")).fuse(runs) == score_fuse(pairs, {})
    assert _retriever(SearchConfig(fusion="score", score_normalisation="zscore")).fuse(runs) == score_fuse(
        pairs, {}, "zscore")
    assert _retriever(SearchConfig(fusion="rrf", rrf_k=5)).fuse(runs) == rrf_fuse(
        {n: r.ids for n, r in runs.items()}, {}, 5)
    with pytest.raises(ConfigError, match="search.fusion 'borda' is not one of rrf, score"):
        SearchConfig(fusion="borda")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="score_normalisation"):
        SearchConfig(score_normalisation="l2")  # type: ignore[arg-type]


def test_score_fusion_with_the_modality_balance_brings_the_image_in() -> None:
    # the image is CLIP's best; text item 2 is strong in both text runs, 1 in one of them
    runs = {RunName.CLIP_TEXT: _run([10]), RunName.TEXT: _run([1, 2, 3], [0.7, 0.65, 0.3]),
            RunName.BM25: _run([2, 1, 3], [8.0, 4.0, 1.0])}
    plain = _retriever(SearchConfig(fusion="score", modality_balance=0.0), MEMBERS).fuse(runs)
    balanced = _retriever(SearchConfig(fusion="score", modality_balance=0.6), MEMBERS).fuse(runs)
    assert [i for i, _ in plain] == [2, 1, 10, 3] and [i for i, _ in balanced] == [2, 10, 1, 3]
    # 3 runs found something: an image is reachable by 1 of them, a text item by 2
    assert dict(plain)[10] == pytest.approx(1.0) and dict(balanced)[10] == pytest.approx(3.0 ** 0.6)
    assert dict(balanced)[1] == pytest.approx(dict(plain)[1] * 1.5 ** 0.6)


def test_candidates_grow_with_the_results_asked_for() -> None:
    cfg = SearchConfig()
    assert (cfg.depth, cfg.depth_per_k) == (100, 4.0)
    assert cfg.candidates(10) == 100 and cfg.candidates(140) == 560  # deep enough for Recall@100
    assert cfg.candidates(10, depth=30) == 40 and SearchConfig(depth_per_k=1).candidates(140) == 140
    with pytest.raises(ConfigError, match="depth_per_k must be a number >= 1"):
        SearchConfig(depth_per_k=0.5)


def test_run_spaces_cover_every_run() -> None:
    assert set(RUN_SPACES) == set(RunName)
    assert RUN_SPACES[RunName.CLIP_IMAGE] == (Space.CLIP, Space.CLIP_TEXTS)
    assert RUN_SPACES[RunName.CLIP_TEXT] == (Space.CLIP,)


# ---- MMR -------------------------------------------------------------------------------


def test_mmr_drops_near_duplicates() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    vectors = {Space.CLIP: {1: a, 2: a, 3: b}}  # 2 repeats 1; 3 is different but ranked last
    kept = [(1, 0.9), (2, 0.85), (3, 0.5)]
    r = _retriever(SearchConfig(mmr_lambda=0.3), vectors=vectors)  # similarity weighs more than rank
    assert [i for i, _ in r._mmr(kept, 2)] == [1, 3]
    assert [i for i, _ in _retriever(SearchConfig(mmr_lambda=1.0), vectors=vectors)._mmr(kept, 2)] == [1, 2]


def test_mmr_uses_the_text_space_without_clip_and_keeps_items_without_vectors() -> None:
    a = np.array([1.0, 0.0], np.float32)
    r = _retriever(SearchConfig(mmr_lambda=0.5), vectors={Space.TEXT: {1: a, 2: a}})
    assert [i for i, _ in r._mmr([(1, 1.0), (2, 0.9), (7, 0.8)], 3)] == [1, 7, 2]
