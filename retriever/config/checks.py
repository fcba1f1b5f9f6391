"""Validation helpers for the config sections: each section checks itself in ``__post_init__``.

A section collects every problem it finds and raises one ``ConfigError`` that names each
setting, the value that came and what was expected, so a user fixes them all in one go.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from retriever.errors import ConfigError

__all__ = ["Problems", "normalise", "parse_llm_spec"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Problems:
    """What is wrong with one config section (``section`` names it in every message)."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.found: list[str] = []

    def name(self, setting: str) -> str:
        return f"{self.section}.{setting}"

    def add(self, message: str) -> None:
        self.found.append(message)

    def one_of(self, setting: str, value: Any, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        if value not in allowed:
            self.add(f"{self.name(setting)} {value!r} is not one of {', '.join(allowed)}")

    def at_least(self, setting: str, value: Any, least: float, *, integer: bool = False) -> None:
        kind = "an integer" if integer else "a number"
        ok = _is_number(value) and (not integer or isinstance(value, int)) and value >= least
        if not ok:
            self.add(f"{self.name(setting)} must be {kind} >= {least:g}, got {value!r}")

    def above(self, setting: str, value: Any, low: float) -> None:
        if not (_is_number(value) and value > low):
            self.add(f"{self.name(setting)} must be a number > {low:g}, got {value!r}")

    def between(self, setting: str, value: Any, low: float, high: float) -> None:
        if not (_is_number(value) and low <= value <= high):
            self.add(f"{self.name(setting)} must be between {low:g} and {high:g}, got {value!r}")

    def non_empty(self, setting: str, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            self.add(f"{self.name(setting)} must be a non-empty string, got {value!r}")

    def raise_if_any(self) -> None:
        if self.found:
            raise ConfigError(f"{self.section} settings: " + "; ".join(self.found))


def normalise(section: Any, setting: str, default: str) -> str:
    """Set a frozen section's string ``setting`` to its stripped, lower-case form (``default`` if unset)."""
    value = getattr(section, setting)
    if isinstance(value, str):
        value = value.strip().lower() or default
    elif value is None:
        value = default
    object.__setattr__(section, setting, value)
    return value


def parse_llm_spec(spec: Any) -> tuple[str, str | None]:
    """Split an LLM spec: ``"openai:gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``, ``"extractive"`` -> (kind, None).

    Pure string work, so ``llm.spec`` is checked when the config is read, before any model is used.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"LLM spec must be a non-empty string, got {spec!r}")
    kind, _, model = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "extractive":
        if model:
            raise ConfigError(f"LLM spec {spec!r}: 'extractive' takes no model name")
        return kind, None
    if kind in ("openai", "ollama"):
        if not model.strip():
            raise ConfigError(f"LLM spec {spec!r} names no model; expected {kind}:MODEL")
        return kind, model.strip()
    if kind == "llamacpp":
        return kind, model.strip() or None
    raise ConfigError(f"unknown LLM spec {spec!r}; expected extractive, openai:MODEL, ollama:MODEL or llamacpp[:PATH]")
