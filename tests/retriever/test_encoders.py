"""Encoders: spec parsing, device choice, load errors, MiniLM offline, encoder contracts."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from retriever.config import ModelsConfig
from retriever.encoders import (
    ClipEncoder,
    ImageTextEncoder,
    SentenceTransformerEncoder,
    TextEncoder,
    build_clip_encoder,
    build_text_encoder,
    cpu_supports_bf16,
    parse_clip_spec,
    resolve_device,
)
from retriever.encoders.spec import hub_offline_reason
from retriever.errors import ConfigError, ModelLoadError

SENTENCES = [
    "A man is playing a guitar on stage.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "She baked a chocolate cake for her daughter's birthday.",
    "The patient was treated with a high dose of vitamin D for twelve weeks.",
    "Heavy rain caused flooding in several coastal towns overnight.",
    "The new graphics card renders scenes twice as fast as the previous model.",
    "Children were playing football in the park after school.",
]


# ----------------------------------------------------------------------------- spec parsing


def test_spec_pretrained_tag() -> None:
    spec = parse_clip_spec("ViT-B-32@laion2b_s34b_b79k")
    assert (spec.kind, spec.model_name, spec.pretrained) == ("pretrained", "ViT-B-32", "laion2b_s34b_b79k")
    assert spec.enabled and spec.weights is None
    assert spec.model_id == "open_clip:ViT-B-32@laion2b_s34b_b79k"


@pytest.mark.parametrize("text", ["none", " NONE ", "None"])
def test_spec_none(text: str) -> None:
    spec = parse_clip_spec(text)
    assert spec.kind == "none" and not spec.enabled and spec.model_id == "none"


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_spec_local_weights(tmp_path: Path, suffix: str) -> None:
    weights = tmp_path / f"w{suffix}"
    weights.write_bytes(b"x" * 100)
    spec = parse_clip_spec(f"ViT-B-32@{weights}")
    assert (spec.kind, spec.model_name, spec.weights) == ("file", "ViT-B-32", weights)
    assert spec.model_id.startswith(f"open_clip:ViT-B-32@w{suffix}:100:")


def test_spec_relative_weights_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = parse_clip_spec("ViT-B-32@weights.safetensors")
    assert spec.weights == tmp_path / "weights.safetensors"


def test_spec_model_id_tracks_content_not_location(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    (a / "w.pt").write_bytes(b"0123456789")
    shutil.copy(a / "w.pt", b / "w.pt")
    (c / "w.pt").write_bytes(b"0123456780")  # same name and size, other content
    ids = [parse_clip_spec(f"ViT-B-32@{d / 'w.pt'}").model_id for d in (a, b, c)]
    assert ids[0] == ids[1] != ids[2]
    assert parse_clip_spec(f"ViT-B-32@{a / 'w.pt'}").model_id == ids[0]  # stable


def test_spec_custom_config(tmp_path: Path) -> None:
    cfg, weights = tmp_path / "my-model.json", tmp_path / "my-model.pt"
    cfg.write_text("{}")
    weights.write_bytes(b"abc")
    spec = parse_clip_spec(f"{cfg}@{weights}")
    assert (spec.kind, spec.model_name, spec.config, spec.weights) == ("config", "my-model", cfg, weights)
    assert spec.model_id.startswith("open_clip:config=my-model.json:2:")
    assert "@my-model.pt:3:" in spec.model_id


def test_spec_path_with_at_sign(tmp_path: Path) -> None:
    d = tmp_path / "user@host"
    spec = parse_clip_spec(f"{d}/cfg.json@{d}/w.safetensors")
    assert spec.config == d / "cfg.json" and spec.weights == d / "w.safetensors"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ViT-B-32", "no '@'"),
        ("ViT-B-32@", "no '@'"),
        ("@laion2b_s34b_b79k", "no '@'"),
        ("ViT-B-32@bad tag!", "neither a pretrained tag"),
        ("/models/cfg.json@laion2b", "needs a local weights file"),
        ("/models/weights.pt@x.pt", "not a .json model config"),
        ("Vi T@tag", "not a valid open_clip model name"),
    ],
)
def test_spec_errors_name_input_and_expectation(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_clip_spec(text)
    msg = str(err.value)
    assert needle in msg
    assert "expected" in msg or "needs" in msg
    if text.strip():
        assert text.strip() in msg


def test_spec_not_a_string() -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        parse_clip_spec(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- device choice


def _cpuinfo(tmp_path: Path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return str(path)


@pytest.mark.parametrize("flags, expected", [("avx512f amx_bf16 amx_tile", True), ("avx512f avx512_bf16", True),
                                             ("avx512f avx512_vnni", False), ("", False)])
def test_cpu_bf16_detection(tmp_path: Path, flags: str, expected: bool) -> None:
    assert cpu_supports_bf16(_cpuinfo(tmp_path, flags)) is expected
    assert cpu_supports_bf16(tmp_path / "missing") is False


def test_resolve_device_auto_and_overrides(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU policy test; this machine has CUDA (auto would pick it)")
    with_bf16, without = _cpuinfo(tmp_path, "avx512_bf16"), str(tmp_path / "none")
    Path(without).write_text("flags\t: sse2 avx2\n")
    assert resolve_device(ModelsConfig(), cpuinfo=with_bf16).precision == "bf16"
    assert resolve_device(ModelsConfig(), cpuinfo=without).precision == "fp32"
    plan = resolve_device(ModelsConfig(device="cpu", precision="fp32"), cpuinfo=with_bf16)
    assert (plan.device, plan.precision, plan.dtype) == ("cpu", "fp32", torch.float32)
    assert resolve_device(ModelsConfig(precision="bf16"), cpuinfo=without).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device(ModelsConfig(device="cuda"))


@pytest.mark.parametrize("kw, needle", [({"precision": "fp8"}, "models.precision"), ({"device": "tpu"}, "models.device"),
                                        ({"device": "cpu", "precision": "fp16"}, "needs a CUDA device")])
def test_resolve_device_rejects_bad_settings(kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        resolve_device(ModelsConfig(**kw))


# ----------------------------------------------------------------------------- CLIP load errors


def test_builders() -> None:
    assert build_clip_encoder(ModelsConfig(clip="none")) is None
    enc = build_clip_encoder(ModelsConfig(clip="ViT-B-32@laion2b_s34b_b79k"))
    # isinstance on a runtime Protocol reads every member (``dim`` too): it must not load weights
    assert isinstance(enc, ClipEncoder) and isinstance(enc, ImageTextEncoder)
    assert enc.space == "clip" and enc.model_id == "open_clip:ViT-B-32@laion2b_s34b_b79k"
    assert enc.dim == 512 and enc._state is None
    text = build_text_encoder(ModelsConfig())
    assert isinstance(text, SentenceTransformerEncoder) and isinstance(text, TextEncoder) and text.space == "text"
    assert text.dim == 384 and text._state is None
    with pytest.raises(ConfigError):
        ClipEncoder("none")


def test_missing_weights_file_names_path_and_hint(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "open_clip_model.safetensors"
    enc = ClipEncoder(f"ViT-B-32@{missing}")  # construction is cheap and never loads
    with pytest.raises(ModelLoadError) as err:
        enc.encode_texts(["a cat"])
    msg = str(err.value)
    assert str(missing) in msg and "not found" in msg
    assert "MMRAG_CLIP_MODEL=ViT-B-32@" in msg and "--clip-model" in msg
    with pytest.raises(ModelLoadError, match="not found"):
        _ = enc.model_id


@pytest.mark.parametrize("name", ["tiny.safetensors", "tiny.pt", "tiny.bin"])
def test_corrupt_weights_file(tmp_path: Path, name: str) -> None:
    from pipelines.synthetic import TINY_CLIP_CONFIG

    cfg = tmp_path / "corrupt-test.json"
    cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
    weights = tmp_path / name
    weights.write_bytes(b"\x00garbage, not a checkpoint" * 50)
    with pytest.raises(ModelLoadError) as err:
        ClipEncoder(f"{cfg}@{weights}").encode_texts(["a red circle"])
    msg = str(err.value)
    assert str(weights) in msg and str(cfg) in msg and "MMRAG_CLIP_MODEL" in msg


def test_weights_for_another_architecture(tmp_path: Path, tiny_clip_spec: str) -> None:
    from pipelines.synthetic import TINY_CLIP_CONFIG

    other = json.loads(json.dumps(TINY_CLIP_CONFIG))
    other["vision_cfg"]["width"] = 32
    cfg = tmp_path / "other-arch.json"
    cfg.write_text(json.dumps(other))
    weights = parse_clip_spec(tiny_clip_spec).weights
    with pytest.raises(ModelLoadError, match="size mismatch"):
        ClipEncoder(f"{cfg}@{weights}").encode_texts(["x"])


def test_unknown_model_name(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="ViT-B-99.*not an open_clip model; did you mean"):
        ClipEncoder(f"ViT-B-99@{weights}").encode_texts(["x"])


def test_config_named_like_builtin_is_refused(tmp_path: Path) -> None:
    from pipelines.synthetic import TINY_CLIP_CONFIG

    cfg = tmp_path / "ViT-B-32.json"
    cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="built-in open_clip model 'ViT-B-32'"):
        ClipEncoder(f"{cfg}@{weights}").encode_texts(["x"])


def test_unknown_pretrained_tag_lists_known_tags() -> None:
    with pytest.raises(ModelLoadError, match="unknown pretrained tag.*laion2b_s34b_b79k"):
        ClipEncoder("ViT-B-32@no_such_tag").encode_texts(["x"])


def _forbid_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip, "download_pretrained", boom)


def test_pretrained_tag_offline_env_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _forbid_downloads(monkeypatch)
    with pytest.raises(ModelLoadError) as err:
        ClipEncoder("ViT-B-32@laion2b_s34b_b79k").encode_texts(["x"])
    msg = str(err.value)
    assert "'ViT-B-32'" in msg and "'laion2b_s34b_b79k'" in msg
    assert "not in the local cache" in msg and "HF_HUB_OFFLINE" in msg and "MMRAG_CLIP_MODEL" in msg


def test_pretrained_tag_unreachable_hub_fails_without_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MMRAG_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    if hub_offline_reason() is None:
        pytest.skip("the model hub is reachable from here; this test is about offline machines")
    _forbid_downloads(monkeypatch)
    with pytest.raises(ModelLoadError, match=r"unreachable.*MMRAG_CLIP_MODEL=ViT-B-32@/path"):
        ClipEncoder("ViT-B-32@laion2b_s34b_b79k").encode_texts(["x"])


# ----------------------------------------------------------------------------- CLIP encoder contract


@pytest.fixture(scope="module")
def tiny(tiny_clip_spec: str) -> ClipEncoder:
    return ClipEncoder(tiny_clip_spec, ModelsConfig(batch_size=16))


def _shapes(n: int, seed: int) -> list:
    from pipelines.synthetic import generate

    return [s.image for s in generate(n, seed=seed)]


def test_clip_outputs_normalised_float32(tiny: ClipEncoder) -> None:
    images = _shapes(37, seed=5)
    img = tiny.encode_images(images)
    txt = tiny.encode_texts(["a red circle", "a blue star", ""])
    for arr, n in ((img, 37), (txt, 3)):
        assert arr.dtype == np.float32 and arr.shape == (n, tiny.dim)
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    assert tiny.encode_images([]).shape == (0, tiny.dim)
    assert tiny.encode_preprocessed([]).shape == (0, tiny.dim)
    assert tiny.encode_texts([]).shape == (0, tiny.dim)


def test_clip_batching_does_not_change_results(tiny_clip_spec: str, tiny: ClipEncoder) -> None:
    images = _shapes(21, seed=6)
    one = ClipEncoder(tiny_clip_spec, ModelsConfig(batch_size=1, precision="fp32")).encode_images(images)
    many = ClipEncoder(tiny_clip_spec, ModelsConfig(batch_size=64, precision="fp32")).encode_images(images)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_clip_bf16_matches_fp32(tiny_clip_spec: str) -> None:
    images = _shapes(16, seed=7)
    texts = ["a small red circle on the left", "a large purple cross at the top", "a green star"]
    fp32 = ClipEncoder(tiny_clip_spec, ModelsConfig(precision="fp32"))
    bf16 = ClipEncoder(tiny_clip_spec, ModelsConfig(precision="bf16"))
    assert bf16.device_plan.precision == "bf16"
    for a, b in ((fp32.encode_images(images), bf16.encode_images(images)),
                 (fp32.encode_texts(texts), bf16.encode_texts(texts))):
        assert np.min(np.sum(a * b, axis=1)) > 0.99


def test_clip_long_text_is_truncated_not_fatal(tiny: ClipEncoder) -> None:
    long = " ".join(["a red circle next to a blue square"] * 500)
    out = tiny.encode_texts([long, "a red circle"])
    assert out.shape == (2, tiny.dim) and np.isfinite(out).all()


def test_clip_text_tower_stops_at_last_token_with_same_vectors(tiny_clip_spec: str) -> None:
    """Queries run only up to the batch's longest token sequence, not the padded context."""
    import torch

    enc = ClipEncoder(tiny_clip_spec, ModelsConfig(precision="fp32"))
    state = enc._load()
    assert state.encode_text is not state.model.encode_text  # the trimmed path is in use
    texts = ["", "a red circle", "a large purple cross at the top left of a green background",
             " ".join(["a red circle next to a blue square"] * 40)]  # the last is cut at the context length
    seen: list[int] = []
    handle = state.model.token_embedding.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        got = enc.encode_texts(texts[:3])
    finally:
        handle.remove()
    tokens = state.tokenizer(texts[:3])
    assert seen == [int((tokens != 0).sum(dim=1).max())] and seen[0] < tokens.shape[1]
    with torch.inference_mode():
        full = torch.nn.functional.normalize(state.model.encode_text(state.tokenizer(texts)).float(), dim=-1)
    np.testing.assert_allclose(enc.encode_texts(texts), full.numpy(), atol=1e-5)
    np.testing.assert_allclose(got, full.numpy()[:3], atol=1e-5)


def test_clip_preprocess_from_threads(tiny: ClipEncoder) -> None:
    images = _shapes(24, seed=8)
    sequential = [tiny.preprocess(im) for im in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(tiny.preprocess, images))
    for a, b in zip(sequential, threaded):
        assert a.shape == b.shape and bool((a == b).all())
    np.testing.assert_allclose(tiny.encode_preprocessed(threaded), tiny.encode_images(images), atol=1e-6)


def test_clip_loads_once_under_concurrency(tiny_clip_spec: str) -> None:
    enc = ClipEncoder(tiny_clip_spec)
    barrier = threading.Barrier(4)

    def first_use(_: int) -> int:
        barrier.wait()
        return id(enc._load().model)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert len(set(pool.map(first_use, range(4)))) == 1


def test_clip_rejects_wrong_input_types(tiny: ClipEncoder) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        tiny.encode_texts("a red circle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1"):
        tiny.encode_texts(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="PIL"):
        tiny.preprocess(np.zeros((8, 8, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- MiniLM (text space)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder("all-MiniLM-L6-v2", ModelsConfig(batch_size=4))


def test_minilm_loads_offline_from_package(minilm: SentenceTransformerEncoder) -> None:
    assert minilm.encode_texts(["hello"]).shape == (1, 384)
    assert minilm.dim == 384 and minilm._state is not None and minilm._state.dim == 384
    assert minilm.model_id.startswith("sentence-transformers:all-MiniLM-L6-v2:")
    assert SentenceTransformerEncoder("sentence-transformers/all-MiniLM-L6-v2").model_id == minilm.model_id


def test_minilm_ranks_paraphrase_above_unrelated(minilm: SentenceTransformerEncoder) -> None:
    query, para, other = minilm.encode_texts(
        ["A kitten is sleeping on the sofa.", "A small cat naps on the couch.", "Interest rates rose again this quarter."]
    )
    assert float(query @ para) > float(query @ other) + 0.3


def test_minilm_outputs_normalised_float32(minilm: SentenceTransformerEncoder) -> None:
    out = minilm.encode_texts(SENTENCES + ["", "x" * 20000])  # empty and over-long inputs
    assert out.dtype == np.float32 and out.shape == (len(SENTENCES) + 2, 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert minilm.encode_texts([]).shape == (0, 384)
    with pytest.raises(TypeError, match="sequence of strings"):
        minilm.encode_texts("one string")  # type: ignore[arg-type]


def test_minilm_bf16_close_to_fp32(minilm: SentenceTransformerEncoder) -> None:
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16 (amx_bf16 / avx512_bf16)")
    fp32 = SentenceTransformerEncoder("all-MiniLM-L6-v2", ModelsConfig(precision="fp32"))
    bf16 = SentenceTransformerEncoder("all-MiniLM-L6-v2", ModelsConfig(precision="bf16"))
    a, b = fp32.encode_texts(SENTENCES), bf16.encode_texts(SENTENCES)
    assert fp32.device_plan.precision == "fp32" and bf16.device_plan.precision == "bf16"
    assert float(np.min(np.sum(a * b, axis=1))) > 0.999


def test_minilm_threads_share_one_model(minilm: SentenceTransformerEncoder) -> None:
    expected = minilm.encode_texts(SENTENCES)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: minilm.encode_texts(SENTENCES), range(4)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_text_model_errors(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    with pytest.raises(ModelLoadError) as err:
        SentenceTransformerEncoder(str(missing)).encode_texts(["x"])
    assert str(missing) in str(err.value) and "MMRAG_TEXT_MODEL" in str(err.value)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "modules.json").write_text("not json")
    with pytest.raises(ModelLoadError, match="broken-model"):
        SentenceTransformerEncoder(str(broken)).encode_texts(["x"])
    with pytest.raises(ConfigError):
        SentenceTransformerEncoder("  ")


def test_text_hub_name_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = SentenceTransformerEncoder("some-org/some-model-not-cached")
    assert enc.model_id == "sentence-transformers:some-org/some-model-not-cached"
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        enc.encode_texts(["x"])
