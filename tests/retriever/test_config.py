"""Settings: where they come from (precedence), how they are checked, and the ``MMRAG_*`` variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from retriever.config import (
    AudioConfig,
    Config,
    IndexConfig,
    IngestConfig,
    LlmConfig,
    ModelsConfig,
    SearchConfig,
    VideoConfig,
    env,
)
from retriever.config.checks import parse_llm_spec
from retriever.errors import ConfigError


def _toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---- precedence -------------------------------------------------------------------------


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    cfg = Config.load(tmp_path / "store", env={})
    assert cfg.search == SearchConfig() and cfg.index == IndexConfig() and cfg.store == str(tmp_path / "store")
    assert cfg.explicit == {"store"}


def test_each_layer_wins_over_the_one_before(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _toml(store / "mmrag.toml", '[search]\nk = 3\ndepth = 30\nrrf_k = 7\nmodality_balance = 0.1\n')
    extra = _toml(tmp_path / "extra.toml", '[search]\ndepth = 40\nrrf_k = 8\nmodality_balance = 0.2\n')
    environ = {"MMRAG_CONFIG": str(extra), "MMRAG_INDEX": "hnsw", "MMRAG_PRECISION": "fp32"}
    cfg = Config.load(store, overrides={"search.modality_balance": 0.3, "models.precision": "bf16"}, env=environ)
    # defaults < store mmrag.toml < MMRAG_CONFIG file < MMRAG_* < overrides
    assert (cfg.search.k, cfg.search.depth, cfg.search.rrf_k) == (3, 40, 8)
    assert cfg.search.modality_balance == 0.3 and cfg.models.precision == "bf16" and cfg.index.kind == "hnsw"
    assert cfg.is_explicit("search.k") and cfg.is_explicit("index.kind") and not cfg.is_explicit("search.mmr")


def test_store_comes_from_the_argument_then_mmrag_store(tmp_path: Path) -> None:
    assert Config.load(env={"MMRAG_STORE": str(tmp_path / "s")}).store == str(tmp_path / "s")
    assert Config.load(tmp_path / "t", env={"MMRAG_STORE": str(tmp_path / "s")}).store == str(tmp_path / "t")
    assert Config.load(env={}).store == "./mmrag-store"


def test_layers_are_checked_together_not_one_by_one(tmp_path: Path) -> None:
    # the file alone would put the overlap above the default chunk size; with the override it fits
    _toml(tmp_path / "mmrag.toml", "[ingest]\nchunk_overlap = 1500\n")
    cfg = Config.load(tmp_path, overrides={"ingest.chunk_chars": 2000}, env={})
    assert (cfg.ingest.chunk_chars, cfg.ingest.chunk_overlap) == (2000, 1500)


def test_strings_from_the_environment_become_typed_values(tmp_path: Path) -> None:
    cfg = Config.load(tmp_path, env={}, overrides={"ingest.follow_symlinks": "yes", "search.k": "4",
                                                   "pdf.passwords": "a, b", "search.weights": {"bm25": "2"}})
    assert cfg.ingest.follow_symlinks is True and cfg.search.k == 4 and cfg.pdf.passwords == ("a", "b")
    assert cfg.search.weight("bm25") == 2.0 and cfg.search.weight("text") == 1.0


@pytest.mark.parametrize("overrides, needle", [
    ({"search.nope": 1}, "unknown setting 'search.nope'; expected one of: k, depth"),
    ({"search": 3}, "setting search is a section"),
    ({"search.k": "many"}, "setting search.k: cannot use 'many'"),
    ({"ingest.follow_symlinks": "perhaps"}, "ingest.follow_symlinks: cannot use 'perhaps'"),
    ({"explicit": "x"}, "unknown setting 'explicit'"),
])
def test_bad_overrides_name_the_setting(tmp_path: Path, overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Config.load(tmp_path, overrides=overrides, env={})


def test_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    _toml(tmp_path / "mmrag.toml", "[search\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(tmp_path, env={})


# ---- each section checks itself -----------------------------------------------------------


@pytest.mark.parametrize("make, needles", [
    (lambda: ModelsConfig(precision="fp8"), ["models.precision 'fp8' is not one of auto, fp32, bf16, fp16"]),
    (lambda: ModelsConfig(device="tpu"), ["models.device 'tpu' is not one of auto, cpu, cuda, cuda:N"]),
    (lambda: ModelsConfig(device="cpu", precision="fp16"), ["'fp16' needs a CUDA device"]),
    (lambda: ModelsConfig(batch_size=0), ["models.batch_size must be an integer >= 1, got 0"]),
    (lambda: IndexConfig(storage="int3"), ["index.storage 'int3' is not one of fp32, fp16, bf16, sq8"]),
    (lambda: IndexConfig(use_gpu="sometimes"), ["index.use_gpu 'sometimes' is not one of auto, never, always"]),
    (lambda: IndexConfig(backend="no such"), ["index.backend 'no such' is not a backend name"]),
    (lambda: IndexConfig(hnsw_m=1, bm25_refresh_s=-1), ["index.hnsw_m must be an integer >= 2",
                                                        "index.bm25_refresh_s must be a number >= 0, got -1"]),
    (lambda: SearchConfig(min_text_similarity=1.5), ["min_text_similarity must be between -1 and 1, got 1.5"]),
    (lambda: SearchConfig(clip_text_scope="some"), ["clip_text_scope 'some' is not one of visual, all"]),
    (lambda: SearchConfig(weights=(("clip", 1.0),)), ["unknown run(s) clip; expected clip_text, clip_image"]),
    (lambda: SearchConfig(weights=(("bm25", -1.0),)), ["search.weights must be >= 0"]),
    (lambda: SearchConfig(k=0, depth=0), ["search.k must be an integer >= 1", "search.depth must be"]),
    (lambda: IngestConfig(chunk_chars=100, chunk_overlap=100), ["chunk_overlap (100) must be less than"]),
    (lambda: IngestConfig(workers=-1), ["ingest.workers must be an integer >= 0, got -1"]),
    (lambda: AudioConfig(backend="kaldi"), ["audio.backend 'kaldi' is not one of faster-whisper, openai-whisper"]),
    (lambda: AudioConfig(window_min_s=30, window_max_s=10), ["audio.window_max_s (10) must be >= audio.window_min_s"]),
    (lambda: VideoConfig(sample_fps=0), ["video.sample_fps must be a number > 0, got 0"]),
    (lambda: LlmConfig(spec="gpt4"), ["llm.spec: unknown LLM spec 'gpt4'"]),
    (lambda: LlmConfig(max_images=-1), ["llm.max_images must be an integer >= 0, got -1"]),
    (lambda: LlmConfig(prompt="Q: {question}"), ["llm.prompt must contain {evidence} exactly once (found 0)"]),
    (lambda: LlmConfig(timeout_s=0), ["llm.timeout_s must be a number > 0"]),
])
def test_sections_reject_bad_values_saying_what_was_expected(make, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_every_problem_of_a_section_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        ModelsConfig(device="tpu", precision="fp8", batch_size=0)
    assert str(err.value).startswith("models settings: ") and str(err.value).count(";") == 2


def test_choices_are_normalised() -> None:
    models = ModelsConfig(device=" CUDA:1 ", precision="BF16")
    assert (models.device, models.precision) == ("cuda:1", "bf16")
    assert IndexConfig(storage="FP32", use_gpu="Never", backend="FAISS") == IndexConfig(
        storage="fp32", use_gpu="never", backend="faiss")


def test_llm_specs() -> None:
    assert parse_llm_spec("extractive") == ("extractive", None)
    assert parse_llm_spec("ollama:llava:7b") == ("ollama", "llava:7b")
    assert parse_llm_spec("llamacpp") == ("llamacpp", None)
    for bad in ("", "gpt4", "openai:", "extractive:x"):
        with pytest.raises(ConfigError):
            parse_llm_spec(bad)
    assert LlmConfig(prompt="/some/template/file.txt").prompt  # a file path is checked when it is read


# ---- MMRAG_* variables ---------------------------------------------------------------------


def test_setting_variables_map_to_settings() -> None:
    got = env.settings_from_env({"MMRAG_INDEX_BACKEND": "faiss", "MMRAG_LLM": "ollama:x", "MMRAG_DEVICE": " ",
                                 "OTHER": "1"})
    assert got == {"index.backend": "faiss", "llm.spec": "ollama:x"}


def test_process_variables(tmp_path: Path) -> None:
    assert env.progress_seconds({"MMRAG_PROGRESS_SECONDS": "0.5"}) == 0.5
    assert env.progress_seconds({"MMRAG_PROGRESS_SECONDS": "soon"}) == 5.0
    assert env.progress_seconds({}) == 5.0 and env.progress_seconds({"MMRAG_PROGRESS_SECONDS": "-3"}) == 0.0
    assert env.torch_threads({}) is None and env.torch_threads({"MMRAG_THREADS": "3"}) == 3
    with pytest.raises(ConfigError, match="MMRAG_THREADS is '0'; expected a positive integer"):
        env.torch_threads({"MMRAG_THREADS": "0"})
    assert env.offline_requested({"MMRAG_OFFLINE": "Yes"}) and not env.offline_requested({"MMRAG_OFFLINE": "0"})
    assert env.cache_dir({"MMRAG_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
    assert env.cache_dir({}) == Path.home() / ".cache" / "mmrag"
    assert env.eval_data_dir({"MMRAG_EVAL_DATA": str(tmp_path / "eval")}) == tmp_path / "eval"
    assert env.eval_data_dir({}) == (Path("..") / "shared" / "eval").resolve()
    assert env.model_cache_for_tests(Path("d"), {}) == Path("d")
    assert env.config_file({"MMRAG_CONFIG": "x.toml"}) == Path("x.toml") and env.store_dir({}) is None


def test_only_known_variables_are_read() -> None:
    with pytest.raises(ConfigError, match="'MMRAG_NOPE' is not an mmrag environment variable; known: "):
        env.env_value("MMRAG_NOPE", {})
    assert set(env.PROCESS_VARS).isdisjoint(env.SETTING_VARS)
