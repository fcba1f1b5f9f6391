"""Readiness, apart from liveness: ``/healthz`` answers as soon as the process serves, ``/readyz``
only once the models a query needs are loaded and warm (``Engine.warm``), so a load balancer
sends no query that would pay a model load."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pipelines.engine import Engine

__all__ = ["Readiness"]

_log = logging.getLogger(__name__)


class Readiness:
    """``warming`` -> ``ready`` (or ``failed`` with the error); ready at once when not warming."""

    def __init__(self, engine: Engine, warm: bool) -> None:
        self.engine = engine
        self.status = "warming" if warm else "ready"
        self.models: dict[str, float] = {}
        self.error: str | None = None
        self._started = time.monotonic()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.status == "warming" and self._thread is None:
            self._thread = threading.Thread(target=self._warm, daemon=True, name="mmrag-warm")
            self._thread.start()

    def _warm(self) -> None:
        try:
            self.models = {name: round(s, 3) for name, s in self.engine.warm().items()}
            self.status = "ready"
            _log.info("models warm in %.1f s: %s", time.monotonic() - self._started, self.models)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz
            self.error, self.status = f"{type(exc).__name__}: {exc}", "failed"
            _log.error("warming the models failed: %s", self.error)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.status == "ready", "status": self.status, "models": self.models}
        if self.error:
            out["error"] = self.error
        return out
