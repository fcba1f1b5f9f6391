"""The whole config: its sections, and how it is read from files, the environment and arguments.

Precedence (later wins): defaults < ``mmrag.toml`` (in the store directory, then the file
named by ``MMRAG_CONFIG``) < environment (``MMRAG_*``, see ``retriever.config.env``) <
explicit overrides. The layers are merged first and applied once, so each section checks
the values it ends up with, not a half-applied mix.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from retriever.config import env as environment
from retriever.config.media import AudioConfig, IngestConfig, PdfConfig, VideoConfig
from retriever.config.sections import IndexConfig, LlmConfig, ModelsConfig, SearchConfig
from retriever.config.server import ServerConfig
from retriever.errors import ConfigError

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    store: str = "./mmrag-store"
    catalog_url: str | None = None  # SQLAlchemy URL; default sqlite in the store directory
    models: ModelsConfig = field(default_factory=ModelsConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pdf: PdfConfig = field(default_factory=PdfConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    # dotted keys set on purpose (mmrag.toml, MMRAG_* variables, overrides), not settable itself:
    # lets a store's recorded models win over defaults but not over a user's explicit choice
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def load(
        cls,
        store: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        """Defaults < mmrag.toml < environment < ``overrides`` (dotted keys allowed)."""
        store_dir = str(store) if store is not None else environment.store_dir(env) or cls.store
        layers: list[Mapping[str, Any]] = []
        for path in (Path(store_dir) / "mmrag.toml", environment.config_file(env)):
            if path is not None and path.is_file():
                layers.append(_read_toml(path))
        layers += [environment.settings_from_env(env), {"store": store_dir}]
        if overrides:
            layers.append(_require_mapping(overrides))
        merged: dict[str, Any] = {}
        for layer in layers:
            _merge(merged, _nest(layer))
        return cls().with_overrides(merged)

    def with_overrides(self, values: Mapping[str, Any]) -> Config:
        """New config with ``values`` applied; keys are ``section.field`` or nested dicts."""
        nested = _nest(_require_mapping(values))
        if "explicit" in nested:
            raise ConfigError("unknown setting 'explicit'")
        out = _apply(self, nested, "")
        return dataclasses.replace(out, explicit=self.explicit | frozenset(_dotted(nested)))

    def is_explicit(self, key: str) -> bool:
        """Whether the dotted setting ``key`` was set on purpose rather than left at its default."""
        return key in self.explicit


def _require_mapping(values: Any) -> Mapping[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"overrides must be a mapping of setting -> value, got {type(values).__name__}: {values!r}")
    return values


def _dotted(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            out += _dotted(value, f"{prefix}{key}.")
        out.append(f"{prefix}{key}")
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; nested mappings are merged key by key."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"setting names must be strings, got {key!r}")
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return out


def _merge(into: dict[str, Any], values: Mapping[str, Any]) -> None:
    """Deep-merge ``values`` into ``into``: a later layer wins setting by setting."""
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _apply(obj: Any, values: Mapping[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {prefix + key!r}; expected one of: {', '.join(known)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"setting {prefix}{key} is a section; got {value!r}")
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, current, known[key].type, f"{prefix}{key}")
    return dataclasses.replace(obj, **changes) if changes else obj


def _coerce(value: Any, current: Any, annotation: Any, name: str) -> Any:
    """Convert env/TOML strings to the field's type, with an error naming the field."""
    ann = str(annotation)
    try:
        if value is None:
            return None
        if ann.startswith("tuple[tuple"):
            pairs = value.items() if isinstance(value, Mapping) else value
            return tuple((str(k), float(v)) for k, v in pairs)
        if ann.startswith("tuple"):
            if isinstance(value, str):
                return tuple(v for v in (p.strip() for p in value.split(",")) if v)
            return tuple(str(v) for v in value)
        if isinstance(current, bool) or ann == "bool":
            return _boolean(value)
        if ann == "int":
            return int(value)
        if ann == "float":
            return float(value)
        if ann.startswith("str") and isinstance(value, (int, float)):
            return str(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: cannot use {value!r} (expected {ann})") from None


def _boolean(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in {"1", "true", "yes", "on"}:
            return True
        if value.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(value)
    return bool(value)
