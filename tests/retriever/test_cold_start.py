"""Cold start: the converted-weights cache, remembered file hashes, the light text model, what a
one-shot ``mmrag search`` imports, and the query-time threads and precision.

No timed assertions: ``bench/cold_start.py`` measures; these check that the fast paths are taken
and give the same results as the slow ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retriever.config import ModelsConfig
from retriever.encoders import ClipEncoder, SentenceTransformerEncoder, clip_text
from retriever.encoders.fingerprints import DISK_MIN_BYTES, sha256_of
from retriever.encoders.text import packaged_minilm_path
from retriever.encoders.text_light import LightSentenceModel, light_layout
from retriever.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["a red circle", "a large purple cross at the top left", "a green star on the right"]
# what a search has no use for: the HTTP service, LangChain, speech, video, OCR, sentence-transformers
NOT_FOR_SEARCH = ("langchain_core", "fastapi", "uvicorn", "faster_whisper", "ctranslate2", "rapidocr_onnxruntime",
                  "onnxruntime", "sentence_transformers", "sklearn", "pandas")
INGEST_ONLY = ("av", "pypdf", "pypdfium2")  # the ingestors' libraries


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MMRAG_CACHE (weights cache and remembered hashes) for this test."""
    root = tmp_path / "mmrag-cache"
    monkeypatch.setenv("MMRAG_CACHE", str(root))
    return root


def _shapes(n: int) -> list:
    from pipelines.synthetic import generate

    return [s.image for s in generate(n, seed=3)]


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "weights").glob("clip-*.safetensors"))


def _vectors(enc: ClipEncoder, images: list) -> np.ndarray:
    return np.concatenate([enc.encode_texts(TEXTS), enc.encode_texts(TEXTS[:1]), enc.encode_images(images)])


# ----------------------------------------------------------------------------- converted-weights cache


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_second_load_uses_the_cache_with_the_same_vectors(
    cache: Path, tiny_clip_spec: str, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _shapes(4)
    fresh = ClipEncoder(tiny_clip_spec, ModelsConfig(precision=precision, weight_cache=False))
    first = ClipEncoder(tiny_clip_spec, ModelsConfig(precision=precision))
    assert not fresh._load().from_cache and not first._load().from_cache
    assert [p.name.split("-")[-2] for p in _entries(cache)] == [precision]  # one entry, from ``first``

    def no_check(*args: object) -> bool:
        raise AssertionError("the full-length text check ran on a cached load")

    monkeypatch.setattr(clip_text, "_matches_full_length", no_check)
    second = ClipEncoder(tiny_clip_spec, ModelsConfig(precision=precision))
    state = second._load()
    assert state.from_cache and state.encode_text is not state.model.encode_text  # the trimmed path, check reused
    assert {p.dtype for p in state.model.parameters()} == {p.dtype for p in fresh._load().model.parameters()}
    assert repr(state.transform) == repr(fresh._load().transform)
    np.testing.assert_array_equal(_vectors(second, images), _vectors(fresh, images))
    np.testing.assert_array_equal(_vectors(second, images), _vectors(first, images))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _nan(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k).clone() for k in fh.keys()}
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1 and "buffer" not in k)
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata=meta)


def _other_key(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = {**fh.metadata(), "mmrag_key": "0" * 64}
        tensors = {k: fh.get_tensor(k).clone() for k in fh.keys()}
    save_file(tensors, str(path), metadata=meta)


def _missing_tensor(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k).clone() for k in fh.keys() if not k.endswith("ln_final.weight")}
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("damage", [_truncate, _garbage, _nan, _other_key, _missing_tensor])
def test_a_corrupt_cache_entry_is_rebuilt(cache: Path, tiny_clip_spec: str, damage) -> None:
    images = _shapes(2)
    cfg = ModelsConfig(precision="bf16")
    expected = _vectors(ClipEncoder(tiny_clip_spec, cfg), images)  # fills the cache
    [entry] = _entries(cache)
    damage(entry)
    rebuilt = ClipEncoder(tiny_clip_spec, cfg)
    assert not rebuilt._load().from_cache
    np.testing.assert_array_equal(_vectors(rebuilt, images), expected)
    assert _entries(cache) == [entry]  # written again, whole
    again = ClipEncoder(tiny_clip_spec, cfg)
    assert again._load().from_cache
    np.testing.assert_array_equal(_vectors(again, images), expected)


def test_cache_entries_differ_by_precision_and_weights(cache: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    from retriever.encoders.spec import parse_clip_spec

    spec = parse_clip_spec(tiny_clip_spec)
    assert spec.weights is not None and spec.config is not None
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(spec.config, copy / spec.config.name)
    weights = copy / spec.weights.name
    weights.write_bytes(spec.weights.read_bytes())
    for precision in ("bf16", "fp32"):
        ClipEncoder(tiny_clip_spec, ModelsConfig(precision=precision))._load()
    ClipEncoder(f"{copy / spec.config.name}@{weights}", ModelsConfig(precision="fp32"))._load()
    assert len(_entries(cache)) == 2  # same content, same entry, wherever the files are
    with open(weights, "r+b") as fh:  # other weights: another entry
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\x00\x00\x00\x00")
    ClipEncoder(f"{copy / spec.config.name}@{weights}", ModelsConfig(precision="fp32"))._load()
    assert len(_entries(cache)) == 3


def test_an_unwritable_cache_still_loads(tmp_path: Path, tiny_clip_spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    monkeypatch.setenv("MMRAG_CACHE", str(blocker))
    enc = ClipEncoder(tiny_clip_spec, ModelsConfig(precision="bf16"))
    assert enc.encode_texts(TEXTS).shape == (3, enc.dim) and not enc._load().from_cache


# ----------------------------------------------------------------------------- remembered hashes


def test_large_file_hashes_are_remembered_until_the_file_changes(cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from retriever.encoders import fingerprints

    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * DISK_MIN_BYTES)
    digest = sha256_of(str(path), os.stat(path))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (cache / "fingerprints.json").is_file()

    def no_hashing(p: str) -> str:
        raise AssertionError("hashed again")

    monkeypatch.setattr(fingerprints, "_hash_file", no_hashing)
    assert sha256_of(str(path), os.stat(path)) == digest  # another process would find it too
    monkeypatch.undo()
    monkeypatch.setenv("MMRAG_CACHE", str(cache))
    path.write_bytes(b"b" * DISK_MIN_BYTES)  # same size; mtime and ctime move
    assert sha256_of(str(path), os.stat(path)) == hashlib.sha256(path.read_bytes()).hexdigest() != digest


# ----------------------------------------------------------------------------- the text model without sentence-transformers


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-6), ("bf16", 3e-3)])
def test_light_text_model_matches_sentence_transformers(precision: str, atol: float) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    texts = TEXTS + ["", "x " * 600, "The patient was treated with a high dose of vitamin D for twelve weeks."]
    enc = SentenceTransformerEncoder("all-MiniLM-L6-v2", ModelsConfig(precision=precision, batch_size=4))
    got = enc.encode_texts(texts)
    assert enc._state is not None and isinstance(enc._state.model, LightSentenceModel)
    ref = SentenceTransformer(str(packaged_minilm_path()), device="cpu", local_files_only=True)
    if precision != "fp32":
        ref = ref.to(enc.device_plan.dtype)
    want = torch.nn.functional.normalize(ref.encode(texts, batch_size=4, convert_to_tensor=True).float(), dim=-1)
    np.testing.assert_allclose(got, want.numpy(), atol=atol)


@pytest.mark.parametrize("change", [
    ("config_sentence_transformers.json", {"default_prompt_name": "query", "prompts": {"query": "query: "}}),
    ("sentence_bert_config.json", {"max_seq_length": 256, "do_lower_case": True}),
    ("1_Pooling/config.json", {"word_embedding_dimension": 384, "pooling_mode_max_tokens": True}),
])
def test_models_of_another_kind_go_through_sentence_transformers(tmp_path: Path, change: tuple[str, dict]) -> None:
    model = tmp_path / "model"
    shutil.copytree(packaged_minilm_path(), model)
    assert light_layout(model) == {"pooling": "mean", "max_seq_length": 256, "dim": 384}
    name, content = change
    (model / name).write_text(json.dumps(content))
    assert light_layout(model) is None


# ----------------------------------------------------------------------------- query threads and precision


def _threads_seen(module) -> list[int]:
    import torch

    seen: list[int] = []
    module.register_forward_pre_hook(lambda m, i: seen.append(torch.get_num_threads()))
    return seen


@pytest.mark.parametrize("query_threads", [1, 2])
def test_query_threads_setting_is_honoured(tiny_clip_spec: str, query_threads: int) -> None:
    import torch

    from retriever.encoders.device import configure_threads

    configure_threads()  # the first load's own setting, done before this test sets the batch threads
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # the batch setting; a query runs on models.query_threads
    try:
        cfg = ModelsConfig(query_threads=query_threads)
        clip, text = ClipEncoder(tiny_clip_spec, cfg), SentenceTransformerEncoder("all-MiniLM-L6-v2", cfg)
        clip_seen = _threads_seen(clip._load(query=True).model.token_embedding)
        text_state = text._load(query=True)
        assert isinstance(text_state.model, LightSentenceModel)
        text_seen = _threads_seen(text_state.model.model)
        clip.encode_texts(["a red circle"])
        text.encode_texts(["a red circle"])
        assert clip_seen == [query_threads] and text_seen == [query_threads]
        assert torch.get_num_threads() == 3  # restored after the query
        clip.encode_texts(TEXTS)
        text.encode_texts(TEXTS)
        assert clip_seen[-1] == 3 and text_seen[-1] == 3  # batches keep the batch setting
    finally:
        torch.set_num_threads(before)


def test_query_precision_loads_its_own_copy(tiny_clip_spec: str) -> None:
    cfg = ModelsConfig(precision="bf16", query_precision="fp32", weight_cache=False)
    clip = ClipEncoder(tiny_clip_spec, cfg)
    one, batch = clip.encode_texts(TEXTS[:1]), clip.encode_texts(TEXTS)
    assert sorted(clip._states) == ["bf16", "fp32"]
    assert clip._load(query=True).plan.precision == "fp32" and clip.device_plan.precision == "bf16"
    assert float(one[0] @ batch[0]) > 0.99
    text = SentenceTransformerEncoder("all-MiniLM-L6-v2", ModelsConfig(precision="bf16", query_precision="fp32"))
    text.encode_texts(["a red circle"])
    assert sorted(text._states) == ["fp32"]  # a search-only process loads only the query copy
    with pytest.raises(ConfigError, match="query_precision 'fp16' needs a CUDA device"):
        ModelsConfig(device="cpu", query_precision="fp16")
    with pytest.raises(ConfigError, match="query_threads"):
        ModelsConfig(query_threads=-1)


# ----------------------------------------------------------------------------- a one-shot search


_SEARCH = """
import json, sys
from pipelines.cli import main
code = main(sys.argv[1:])
print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture()
def small_store(tmp_path: Path, tiny_clip_spec: str, tiny_clip_encoder, text_encoder) -> Path:
    from pipelines.engine import Engine
    from pipelines.synthetic import write_images

    docs = tmp_path / "docs"
    write_images(docs, 6, seed=4)
    (docs / "note.md").write_text("# Shapes\n\nA red circle sits beside a blue square.\n")
    store = tmp_path / "store"
    with Engine.open(store, overrides={"models.clip": tiny_clip_spec}, clip=tiny_clip_encoder, text=text_encoder) as eng:
        assert eng.ingest([docs]).added == 7
    return store


def _search_modules(store: Path, cache: Path) -> set[str]:
    env = {**os.environ, "MMRAG_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _SEARCH, "search", "a red circle", "--store", str(store), "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hits"]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return {m.split(".", 1)[0] for m in json.loads(line[len("MODULES "):])}


def test_one_shot_search_imports_only_what_it_needs(small_store: Path, cache: Path) -> None:
    modules = _search_modules(small_store, cache)
    assert {"torch", "open_clip", "faiss"} <= modules  # it did search
    assert sorted(modules & set(NOT_FOR_SEARCH)) == []
    assert _entries(cache), "the search filled the weights cache"
    assert sorted(_search_modules(small_store, cache) & set(NOT_FOR_SEARCH)) == []  # from the cache too


def test_one_shot_search_imports_no_ingestor_library(small_store: Path, cache: Path) -> None:
    assert sorted(_search_modules(small_store, cache) & set(INGEST_ONLY)) == []


def test_warm_loads_the_query_models(tiny_clip_spec: str) -> None:
    from pipelines.engine_models import EngineModels
    from retriever.config import Config

    cfg = ModelsConfig(clip=tiny_clip_spec, precision="bf16", query_precision="fp32", weight_cache=False)
    clip, text = ClipEncoder(tiny_clip_spec, cfg), SentenceTransformerEncoder("all-MiniLM-L6-v2", cfg)
    seconds = EngineModels(Config(), clip=clip, text=text).warm()
    assert set(seconds) == {"clip", "text"} and all(s > 0 for s in seconds.values())
    assert sorted(clip._states) == ["fp32"] and sorted(text._states) == ["fp32"]  # the query copies only
