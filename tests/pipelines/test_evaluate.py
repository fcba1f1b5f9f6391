"""The evaluation harness: metrics by hand, dataset loaders, and each ``mmrag eval`` task on real data."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.eval.results import EvalDataError, compare_results, read_results, write_results
from retriever.metrics import (
    dedupe_ranking,
    hit_at_k,
    mean_retrieval_scores,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)

SCIFACT = "retrieval/scifact_beir_subset"


# ---- metrics ---------------------------------------------------------------------------


def test_ranking_metrics_by_hand() -> None:
    ranked = ["d3", "d1", "d7", "d2"]
    rels = {"d1": 2, "d2": 1, "d9": 1}
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, rels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, rels, 1) == 0.0
    assert ndcg_at_k(["d1", "d2", "d9"], rels, 3) == pytest.approx(1.0)
    assert recall_at_k(ranked, rels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, rels, 100) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, rels, 10) == 0.5 and mrr_at_k(ranked, rels, 1) == 0.0
    assert hit_at_k(ranked, ["d7", "x"], 3) == 1.0 and hit_at_k(ranked, ["d7"], 2) == 0.0
    assert dedupe_ranking(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        ndcg_at_k(ranked, rels, 0)


def test_mean_scores_count_unranked_queries_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}  # q3 has nothing relevant: not judged
    scores = mean_retrieval_scores({"q1": ["a"], "q3": ["c"]}, qrels, 10, 100, 10)
    assert scores == {"ndcg@10": 0.5, "recall@100": 0.5, "mrr@10": 0.5}
    with pytest.raises(ValueError, match="no query has a relevant"):
        mean_retrieval_scores({}, {"q": {"a": 0}})


def test_caption_recalls_follow_the_standard_protocol() -> None:
    from pipelines.eval.media import _chance, caption_recalls

    images = np.eye(4, dtype=np.float32)
    # 2 captions per image; caption 7 (image 3) points at image 0 instead
    texts = np.repeat(images, 2, axis=0)
    texts[7] = images[0]
    owner = [0, 0, 1, 1, 2, 2, 3, 3]
    r = caption_recalls(images, texts, owner, ks=(1, 4))
    assert r["t2i_r@1"] == pytest.approx(7 / 8) and r["t2i_r@4"] == 1.0
    # image 3's best caption is caption 6 (exact), so image->text R@1 is perfect
    assert r["i2t_r@1"] == 1.0
    # image 0: captions 0, 1 and 7 tie at 1.0; the stable sort keeps 0 and 1 first
    chance = _chance(4, [2, 2, 2, 2], ks=(1,))
    assert chance["t2i_r@1"] == 0.25 and chance["i2t_r@1"] == pytest.approx(2 / 8)


# ---- datasets and results files --------------------------------------------------------------


def _beir(root: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_load_beir_validates_the_folder(tmp_path: Path) -> None:
    from pipelines.eval.retrieval import load_beir, write_corpus

    docs = [{"_id": "a1", "title": "Alpha", "text": "first"}, {"_id": "b/2 x", "title": "", "text": "second"}]
    root = _beir(tmp_path / "ok", docs, [{"_id": "q1", "text": "alpha?"}, {"_id": "q2", "text": "unjudged"}],
                 [("q1", "a1", 1), ("q1", "b/2 x", 0)])
    ds = load_beir(root)
    assert list(ds.queries) == ["q1"] and ds.qrels["q1"] == {"a1": 1, "b/2 x": 0}
    files = write_corpus(ds, tmp_path / "corpus")
    by_doc = {d: Path(p) for p, d in files.items()}
    assert by_doc["a1"].name == "a1.txt" and by_doc["a1"].read_text() == "Alpha\n\nfirst\n"
    assert by_doc["b/2 x"].name.startswith("doc-") and by_doc["b/2 x"].read_text() == "second\n"
    mtime = by_doc["a1"].stat().st_mtime_ns
    write_corpus(ds, tmp_path / "corpus")
    assert by_doc["a1"].stat().st_mtime_ns == mtime  # unchanged documents are not rewritten

    with pytest.raises(EvalDataError, match="splits present: test"):
        load_beir(root, split="dev")
    bad = _beir(tmp_path / "bad", docs, [{"_id": "q1", "text": "x"}], [("q1", "zz", 1)])
    with pytest.raises(EvalDataError, match="corpus.jsonl lacks"):
        load_beir(bad)
    (bad / "corpus.jsonl").write_text('{"title": "no id"}\n')
    with pytest.raises(EvalDataError, match="corpus.jsonl:1: expected an object with '_id'"):
        load_beir(bad)
    with pytest.raises(EvalDataError, match="not found"):
        load_beir(tmp_path / "missing")


def test_results_file_round_trip_and_compare(tmp_path: Path) -> None:
    from pipelines.eval.results import EvalResult

    old = EvalResult("retrieval", {"fingerprint": "x"}, {"search": {"rrf_k": 60}}, {"text": "m1"},
                     {"fused": {"ndcg@10": 0.70}})
    new = EvalResult("retrieval", {"fingerprint": "x"}, {"search": {"rrf_k": 20}}, {"text": "m1"},
                     {"fused": {"ndcg@10": 0.72}})
    path = write_results(tmp_path / "r" / "old.json", old)
    back = read_results(path)
    assert back["format"] == "mmrag-eval/1" and back["metrics"] == {"fused": {"ndcg@10": 0.7}}
    lines = compare_results(back, new.to_dict())
    assert "settings changed: search.rrf_k" in lines
    assert any(line.startswith("fused.ndcg@10") and "(+0.0200)" in line for line in lines)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(EvalDataError, match="not an mmrag eval results file"):
        read_results(tmp_path / "junk.json")


def test_locator_matching_rules() -> None:
    from pipelines.eval.answers import locator_matches
    from retriever.types import Hit, Locator, Modality

    def hit(uri: str, text: str = "", **loc) -> Hit:
        return Hit(1, 1.0, {}, {}, Modality.PDF, "page", uri, Path(uri).name, Locator(uri=uri, **loc), text, None, None)

    page3 = hit("/data/reports/q3.pdf", "Revenue grew", page=3)
    assert locator_matches({"source": "q3.pdf", "page": 3}, page3)
    assert locator_matches({"source": "reports/q3.pdf", "pages": [2, 3], "contains": "revenue"}, page3)
    assert locator_matches({"source": "*.pdf"}, page3)
    assert not locator_matches({"source": "q3.pdf", "page": 4}, page3)
    assert not locator_matches({"source": "q4.pdf"}, page3)
    assert not locator_matches({"source": "q3.pdf", "contains": "loss"}, page3)
    span = hit("/a/talk.mp4", t_start=80.0, t_end=95.0)
    assert locator_matches({"source": "talk.mp4", "t_start": 90, "t_end": 120}, span)
    assert not locator_matches({"source": "talk.mp4", "t_start": 96, "t_end": 120}, span)
    assert locator_matches({"source": "talk.mp4", "t_start": 96, "t_end": 120, "tolerance_s": 2}, span)
    frame = hit("/a/talk.mp4", t=100.0)
    assert locator_matches({"source": "talk.mp4", "t_start": 90, "t_end": 120}, frame)


# ---- retrieval on the SciFact subset -------------------------------------------------------


def _subset(eval_dir: Path, out: Path, n_queries: int, n_docs: int) -> Path:
    """A BEIR folder with the first ``n_queries`` judged queries, all their relevant docs, and distractors."""
    from pipelines.eval.retrieval import load_beir

    ds = load_beir(eval_dir / SCIFACT)
    qids = list(ds.queries)[:n_queries]
    relevant = {d for q in qids for d, r in ds.qrels[q].items() if r > 0}
    docs = [d for d in ds.corpus if d in relevant]
    docs += [d for d in ds.corpus if d not in relevant][: n_docs - len(docs)]
    corpus = [{"_id": d, "title": ds.corpus[d][0], "text": ds.corpus[d][1]} for d in docs]
    return _beir(out, corpus, [{"_id": q, "text": ds.queries[q]} for q in qids],
                 [(q, d, r) for q in qids for d, r in ds.qrels[q].items()])


@pytest.fixture(scope="module")
def scifact_small(
    tmp_path_factory: pytest.TempPathFactory, eval_dir: Path, tiny_clip_spec: str, tiny_clip_encoder, text_encoder
) -> dict:
    """One mixed store (230 SciFact abstracts + 30 shape images, tiny CLIP), scored through the CLI."""
    from pipelines.cli.main import main
    from pipelines.engine import Engine
    from pipelines.synthetic import generate

    root = tmp_path_factory.mktemp("scifact")
    # 200 queries over their 198 relevant abstracts + 32 distractors: the fusion margin of the full
    # subset (+0.036 nDCG@10) holds here too (about +0.02); a 50-query slice is too noisy for it
    data = _subset(eval_dir, root / "scifact_small", n_queries=200, n_docs=230)
    shapes = root / "shapes"
    shapes.mkdir()
    samples = generate(30, seed=4242, size=128, balanced=True)  # every colour x shape once
    for i, sample in enumerate(samples):
        sample.image.save(shapes / f"img{i:02d}.png")
    with Engine.open(root / "store", overrides={"models.clip": tiny_clip_spec},
                     clip=tiny_clip_encoder, text=text_encoder) as eng:
        assert eng.ingest([shapes]).added == 30
    out = root / "results.json"
    code = main(["eval", "retrieval", str(data), "--store", str(root / "store"), "--clip-model", tiny_clip_spec,
                 "--json", "--out", str(out)])
    assert code == 0
    return {"data": data, "store": root / "store", "results": json.loads(out.read_text()), "clip": tiny_clip_spec,
            "shapes": [(shapes / f"img{i:02d}.png", s) for i, s in enumerate(samples)]}


def test_retrieval_eval_scores_each_space_and_fusion(scifact_small: dict) -> None:
    res = scifact_small["results"]
    metrics = res["metrics"]
    assert set(metrics) == {"bm25", "text", "clip_text", "fused"}
    for name in ("bm25", "text", "fused"):
        m = metrics[name]
        assert set(m) == {"ndcg@10", "recall@100", "mrr@10"}
        assert 0.45 < m["ndcg@10"] <= m["recall@100"] <= 1.0, (name, m)
    # a text query's CLIP run ranks only items with an image: here the shapes, never an abstract
    assert metrics["clip_text"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    # fusion beats every single space, and the shapes (ranked as non-relevant) do not get in the way
    best_single = max(metrics["bm25"]["ndcg@10"], metrics["text"]["ndcg@10"])
    assert metrics["fused"]["ndcg@10"] >= best_single, metrics
    assert res["dataset"]["documents"] == 230 and res["dataset"]["queries"] == 200
    assert res["dataset"]["fingerprint"].startswith("blake2b:")
    assert res["settings"]["items_per_document"] > 1.2  # documents were chunked and mapped back
    assert res["models"]["text"].startswith("sentence-transformers:all-MiniLM-L6-v2") and "tiny-clip" in res["models"]["clip"]
    assert len([r for r in res["rows"] if "query" in r]) == 200


def test_text_queries_for_shapes_find_the_images(scifact_small: dict, tiny_clip_encoder, text_encoder) -> None:
    from pipelines.engine import Engine

    with Engine.open(scifact_small["store"], overrides={"models.clip": scifact_small["clip"]},
                     clip=tiny_clip_encoder, text=text_encoder) as eng:
        found = sum(
            any(h.source_uri == str(path) for h in eng.search(text=sample.label, k=10))
            for path, sample in scifact_small["shapes"]
        )
    assert found >= 27, f"{found}/30 shape queries found their image in the top 10 of the mixed store"


def test_harness_fused_ranking_is_what_search_returns(scifact_small: dict, tiny_clip_encoder, text_encoder) -> None:
    from pipelines.engine import Engine
    from pipelines.eval.retrieval import _cut, collect_candidates, load_beir

    ds = load_beir(scifact_small["data"])
    settings = scifact_small["results"]["settings"]
    depth, results, shallow = (settings[k] for k in ("candidates_per_run", "results_for_recall", "candidates_for_ndcg"))
    with Engine.open(scifact_small["store"], overrides={"models.clip": scifact_small["clip"]},
                     clip=tiny_clip_encoder, text=text_encoder) as eng:
        assert (depth, shallow) == (eng.config.search.candidates(results), eng.config.search.candidates(10))
        queries = dict(list(ds.queries.items())[:5])
        cands = collect_candidates(eng, queries, depth)
        fuse = eng.retriever().fuse
        for qid, text in queries.items():
            # recall: the search deep enough for recall_k documents; nDCG: the search for 10 results
            got = [h.item_id for h in eng.search(text=text, k=results)]
            assert got == [i for i, _ in fuse(cands[qid])][:results]
            top = [h.item_id for h in eng.search(text=text, k=10)]
            assert top == [i for i, _ in fuse(_cut(cands[qid], shallow))][:10]
            bm25_only = [h.item_id for h in eng.search(text=text, k=depth, runs=["bm25"])]
            assert bm25_only == cands[qid]["bm25"].ids[: len(bm25_only)]


def test_second_run_reuses_the_store_and_compares(scifact_small: dict, tmp_path: Path) -> None:
    from pipelines.cli.main import main

    base = tmp_path / "base.json"
    write_results(base, scifact_small["results"])
    out = tmp_path / "again.json"
    code = main(["eval", "retrieval", str(scifact_small["data"]), "--store", str(scifact_small["store"]),
                 "--clip-model", scifact_small["clip"], "--set", "search.rrf_k=30", "--json", "--out", str(out),
                 "--compare", str(base)])
    assert code == 0
    again = json.loads(out.read_text())
    ingest = again["dataset"]["ingest"]
    assert ingest["added"] == 0 and ingest["unchanged"] + ingest["failed"] == 230
    assert again["metrics"]["bm25"] == scifact_small["results"]["metrics"]["bm25"]  # deterministic
    assert "settings changed: search.rrf_k" in again["comparison"]["lines"]


@pytest.mark.slow
def test_full_scifact_subset_fusion_beats_every_single_space(tmp_path: Path, eval_dir: Path, text_encoder) -> None:
    from pipelines.engine import Engine
    from pipelines.eval.retrieval import evaluate_retrieval, load_beir

    ds = load_beir(eval_dir / SCIFACT)
    with Engine.open(tmp_path / "store", overrides={"models.clip": "none"}, text=text_encoder) as eng:
        m = evaluate_retrieval(eng, ds, tmp_path / "corpus").metrics
    assert len(ds.queries) == 300
    assert m["fused"]["ndcg@10"] >= max(m["bm25"]["ndcg@10"], m["text"]["ndcg@10"]), m
    assert m["fused"]["recall@100"] >= 0.9, m


# ---- captions, ASR, answers --------------------------------------------------------------


def test_caption_eval_with_tiny_clip_on_shapes(tmp_path: Path, tiny_clip_spec: str) -> None:
    from pipelines.cli.main import main
    from pipelines.synthetic import generate

    images = tmp_path / "shapes"
    images.mkdir()
    captions = {}
    for i, sample in enumerate(generate(30, seed=123, size=128, balanced=True)):  # every colour x shape once
        name = f"img{i:02d}.png"
        sample.image.save(images / name)
        captions[name] = [sample.label, f"a photo of a {sample.colour} {sample.shape}", sample.caption]
    (images / "captions.json").write_text(json.dumps(captions))
    out = tmp_path / "captions.json"
    assert main(["eval", "captions", str(images), "--clip-model", tiny_clip_spec, "--json", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    model, chance = res["metrics"]["model"], res["metrics"]["chance"]
    assert res["dataset"]["images"] == 30 and res["dataset"]["captions_n"] == 90
    assert chance["t2i_r@1"] == pytest.approx(1 / 30, abs=1e-6)
    assert model["t2i_r@1"] > 5 * chance["t2i_r@1"] and model["t2i_r@10"] > 0.8, model
    assert model["i2t_r@1"] > 5 * chance["i2t_r@1"] and model["i2t_r@5"] > 0.8, model


def test_caption_eval_needs_a_clip_model(eval_dir: Path) -> None:
    from pipelines.eval.media import evaluate_captions
    from retriever.config import Config
    from retriever.errors import ConfigError

    cfg = Config.load(None, {"models.clip": "none"})
    with pytest.raises(ConfigError, match="needs a CLIP model"):
        evaluate_captions(eval_dir / "images", eval_dir / "images" / "captions.json", cfg)


def test_asr_eval_on_reference_clips(tmp_path: Path, eval_dir: Path) -> None:
    if importlib.util.find_spec("faster_whisper") is None:
        pytest.skip("faster-whisper is not installed (media extra)")
    from pipelines.eval.media import evaluate_asr
    from retriever.config import Config

    names = ["librispeech_test-clean_4507-16021-0012.wav", "timit_LDC93S1.wav", "ljspeech_LJ002-0020.wav"]
    refs = json.loads((eval_dir / "audio" / "transcripts.json").read_text())
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in names:
        shutil.copy(eval_dir / "audio" / name, clips / name)
    transcripts = clips / "transcripts.json"
    transcripts.write_text(json.dumps({n: refs[n] for n in names} | {"absent.wav": "not here"}))
    res = evaluate_asr(clips, transcripts, Config.load(None, {})).to_dict()
    assert [r["file"] for r in res["rows"]] == names
    assert res["notes"] == ["missing file: absent.wav"]
    assert res["metrics"]["wer"] < 0.3, res["rows"]
    # "In 1813" is scored against the spoken "in eighteen thirteen" after normalisation
    lj = next(r for r in res["rows"] if r["file"].startswith("ljspeech"))
    assert lj["ref_words"] == 3 and lj["wer"] <= 1 / 3, lj
    assert res["models"]["asr"].startswith("faster-whisper:")


def test_answers_eval_on_pdf_and_audio(tmp_path: Path, eval_dir: Path) -> None:
    for module in ("indexers.pdf.ingestor", "indexers.av.audio", "faster_whisper", "pypdfium2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not available")
    from pipelines.cli.main import main

    pdf, audio = eval_dir / "pdf" / "docling__multi_page.pdf", eval_dir / "audio" / "jfk.flac"
    questions = {
        "corpus": [str(pdf), str(audio)],
        "questions": [
            {"id": "typewriter", "question": "Who patented the typewriter in 1868?",
             "expected": [{"source": pdf.name, "page": 1}]},
            {"id": "screen", "question": "Which tools do screenwriters use for film scripts?",
             "expected": [{"source": "*multi_page.pdf", "page": 3}]},
            {"id": "kennedy", "question": "What did Kennedy ask his fellow Americans?",
             "expected": [{"source": "jfk.flac", "t_start": 0.0, "t_end": 11.0}]},
            {"id": "wrong", "question": "Who patented the typewriter in 1868?",
             "expected": [{"source": "jfk.flac"}]},
        ],
    }
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(questions))
    out = tmp_path / "answers.json"
    assert main(["eval", "answers", str(path), "--clip-model", "none", "--json", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["id"]: r for r in res["rows"]}
    assert rows["typewriter"]["evidence_hit"] and rows["screen"]["evidence_hit"] and rows["kennedy"]["evidence_hit"]
    assert not rows["wrong"]["evidence_hit"]
    assert res["metrics"]["evidence_hit"] == 0.75 and res["metrics"]["citation_validity"] == 1.0
    assert res["metrics"]["answered"] == 1.0


def test_answers_file_errors_are_clear(tmp_path: Path) -> None:
    from pipelines.eval.answers import load_answer_cases

    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"question": "x?", "expected": [{"page": 2}]}]))
    with pytest.raises(EvalDataError, match="needs a 'source' string"):
        load_answer_cases(path)
    path.write_text(json.dumps([{"question": "x?", "expected": [{"source": "a.pdf", "t_start": 1}]}]))
    with pytest.raises(EvalDataError, match="needs both 't_start' and 't_end'"):
        load_answer_cases(path)
    path.write_text('{"question": "a?", "expected": [{"source": "a.pdf"}]}\n{"question": "b?", "expected": []}\n')
    with pytest.raises(EvalDataError, match="question 2: needs a non-empty 'expected'"):
        load_answer_cases(path)
