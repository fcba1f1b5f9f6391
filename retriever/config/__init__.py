"""Typed settings, read once from ``mmrag.toml``, the environment and arguments.

Precedence (later wins): defaults < ``mmrag.toml`` (in the store directory, then the file
named by ``MMRAG_CONFIG``) < environment (``MMRAG_*``) < explicit overrides. Each section is
a frozen dataclass that checks its own values when it is made; ``Config.with_overrides``
returns a new config. ``retriever.config.env`` is the one reader of ``MMRAG_*`` variables.
"""

from __future__ import annotations

from retriever.config.env import eval_data_dir
from retriever.config.media import AudioConfig, IngestConfig, PdfConfig, VideoConfig
from retriever.config.sections import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_TEXT_MODEL,
    IndexConfig,
    LlmConfig,
    ModelsConfig,
    SearchConfig,
)
from retriever.config.server import ServerConfig
from retriever.config.settings import Config

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_TEXT_MODEL",
    "AudioConfig",
    "Config",
    "IndexConfig",
    "IngestConfig",
    "LlmConfig",
    "ModelsConfig",
    "PdfConfig",
    "SearchConfig",
    "ServerConfig",
    "VideoConfig",
    "eval_data_dir",
]
