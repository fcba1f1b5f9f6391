"""Every ``MMRAG_*`` environment variable, read here and nowhere else.

Two kinds: variables that set a config setting (``SETTING_VARS``, applied by ``Config.load``
between ``mmrag.toml`` and explicit overrides), and variables about the process rather than
a store (``PROCESS_VARS``: where the store and caches are, threads, offline mode, progress).
Values are read when asked for, so a variable set after import counts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from retriever.errors import ConfigError

__all__ = [
    "PROCESS_VARS",
    "SETTING_VARS",
    "cache_dir",
    "config_file",
    "env_value",
    "eval_data_dir",
    "model_cache_for_tests",
    "offline_requested",
    "progress_seconds",
    "settings_from_env",
    "store_dir",
    "torch_threads",
]

SETTING_VARS: Mapping[str, str] = {
    "MMRAG_CATALOG_URL": "catalog_url",
    "MMRAG_CLIP_MODEL": "models.clip",
    "MMRAG_TEXT_MODEL": "models.text",
    "MMRAG_DEVICE": "models.device",
    "MMRAG_PRECISION": "models.precision",
    "MMRAG_INDEX": "index.kind",
    "MMRAG_INDEX_BACKEND": "index.backend",
    "MMRAG_MILVUS_URI": "index.milvus_uri",
    "MMRAG_MILVUS_TOKEN": "index.milvus_token",
    "MMRAG_WHISPER_MODEL": "audio.whisper_model",
    "MMRAG_PDF_PASSWORDS": "pdf.passwords",
    "MMRAG_LLM": "llm.spec",
    "MMRAG_LLM_BASE_URL": "llm.base_url",
    "MMRAG_LLM_API_KEY": "llm.api_key",
}

PROCESS_VARS: Mapping[str, str] = {
    "MMRAG_STORE": "the store directory when none is given (default ./mmrag-store)",
    "MMRAG_CONFIG": "a config file read after the store's mmrag.toml",
    "MMRAG_EVAL_DATA": "the public evaluation data (default ../shared/eval)",
    "MMRAG_CACHE": "the demo's models and stores (default ~/.cache/mmrag)",
    "MMRAG_TEST_CACHE": "models the tests train, kept between runs (default .mmrag-cache in the repository)",
    "MMRAG_THREADS": "torch threads for encoding (default: OMP_NUM_THREADS if set, else one per core)",
    "MMRAG_OFFLINE": "1/true/yes/on: never try to download model weights",
    "MMRAG_PROGRESS_SECONDS": "seconds between progress lines when stderr is not a terminal (default 5)",
}

_TRUE = frozenset({"1", "true", "yes", "on"})


def env_value(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of one known ``MMRAG_*`` variable; None when it is unset or blank."""
    if name not in SETTING_VARS and name not in PROCESS_VARS:
        known = ", ".join(sorted({*SETTING_VARS, *PROCESS_VARS}))
        raise ConfigError(f"{name!r} is not an mmrag environment variable; known: {known}")
    value = (os.environ if env is None else env).get(name)
    return value if value and value.strip() else None


def settings_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Dotted setting -> value, for every setting variable that is set."""
    out = {}
    for name, key in SETTING_VARS.items():
        value = env_value(name, env)
        if value is not None:
            out[key] = value
    return out


def store_dir(env: Mapping[str, str] | None = None) -> str | None:
    """``MMRAG_STORE``: the store directory when none is given."""
    return env_value("MMRAG_STORE", env)


def config_file(env: Mapping[str, str] | None = None) -> Path | None:
    """``MMRAG_CONFIG``: a config file read after the store's own ``mmrag.toml``."""
    value = env_value("MMRAG_CONFIG", env)
    return Path(value) if value else None


def eval_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the public evaluation data lives (``MMRAG_EVAL_DATA``, default ``../shared/eval``)."""
    return Path(env_value("MMRAG_EVAL_DATA", env) or Path("..") / "shared" / "eval").resolve()


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the demo keeps its CLIP model and stores: ``MMRAG_CACHE``, else ``~/.cache/mmrag``."""
    return Path(env_value("MMRAG_CACHE", env) or Path.home() / ".cache" / "mmrag").expanduser()


def model_cache_for_tests(default: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where the tests cache the models they train: ``MMRAG_TEST_CACHE``, else ``default``."""
    return Path(env_value("MMRAG_TEST_CACHE", env) or default)


def torch_threads(env: Mapping[str, str] | None = None) -> int | None:
    """``MMRAG_THREADS`` as a positive integer; None when unset."""
    value = env_value("MMRAG_THREADS", env)
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(f"MMRAG_THREADS is {value!r}; expected a positive integer")
    return int(value)


def offline_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``MMRAG_OFFLINE`` asks never to download model weights."""
    return (env_value("MMRAG_OFFLINE", env) or "").strip().lower() in _TRUE


def progress_seconds(env: Mapping[str, str] | None = None, default: float = 5.0) -> float:
    """``MMRAG_PROGRESS_SECONDS`` (>= 0); ``default`` when unset or not a number."""
    try:
        return max(0.0, float(env_value("MMRAG_PROGRESS_SECONDS", env) or default))
    except ValueError:
        return default
