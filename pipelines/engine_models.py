"""The models of one engine, and which models it uses on a store.

Each model given to the engine is used as it is; the others are built from the config on first
use. The first ingest records the store's model settings (``Store.record_models``); an engine
opened later adopts them for every model setting the user left unset, so reading a store never
needs its models repeated, and a model given on purpose that differs from the store's is a
``StoreMismatchError`` (``Store.check_models``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever.config import Config
from retriever.encoders import build_clip_encoder, build_text_encoder
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.encoders.spec import parse_clip_spec
from retriever.store import Store
from retriever.types import SPACE_TEXT, store_spaces

if TYPE_CHECKING:
    from indexers.av.transcribe import SpeechToText

__all__ = ["MODEL_KEYS", "EngineModels", "adopt_store_models"]

MODEL_KEYS = ("models.clip", "models.text", "models.clip_texts")


def adopt_store_models(store: Store, config: Config) -> Config:
    """``config`` with the store's recorded model settings wherever the user set none on purpose."""
    recorded = {k: v for k, v in store.recorded_models().items() if k in MODEL_KEYS and not config.is_explicit(k)}
    if not recorded:
        return config
    return dataclasses.replace(config.with_overrides(recorded), explicit=config.explicit)


class EngineModels:
    """The CLIP, text and speech models of one engine: given ones as they are, the others built
    from ``config`` on first use (safe for concurrent callers)."""

    def __init__(
        self,
        config: Config,
        *,
        clip: ImageTextEncoder | None = None,
        text: TextEncoder | None = None,
        transcriber: SpeechToText | None = None,
    ) -> None:
        self.config = config
        self._given_clip, self._given_text = clip, text
        self._clip, self._clip_built = clip, clip is not None
        self._text = text
        self._transcriber = transcriber
        self._lock = threading.Lock()

    @property
    def clip(self) -> ImageTextEncoder | None:
        """The CLIP model; None when ``models.clip`` is ``none``."""
        with self._lock:
            if not self._clip_built:
                self._clip = build_clip_encoder(self.config.models)
                self._clip_built = True
            return self._clip

    @property
    def text(self) -> TextEncoder:
        with self._lock:
            if self._text is None:
                self._text = build_text_encoder(self.config.models)
            return self._text

    @property
    def transcriber(self) -> SpeechToText:
        """The speech model (audio/video ingest and audio queries)."""
        with self._lock:
            if self._transcriber is None:
                from indexers.av.transcribe import Transcriber

                self._transcriber = Transcriber(self.config.audio, device=self.config.models.device)
            return self._transcriber

    def transcriber_or_none(self) -> SpeechToText | None:
        """The speech model, or None when its library is not installed."""
        try:
            return self.transcriber
        except ImportError:
            return None

    def warm(self) -> dict[str, float]:
        """Load the models a search uses and run one query through each, so that the first real
        query pays no load (what a service does before it says it is ready); seconds per model.

        One text (and, for CLIP, one small image) goes through the query path: the copy of the
        model in ``models.query_precision``, and the weight pages a query touches.
        """
        from PIL import Image

        seconds: dict[str, float] = {}
        clip = self.clip
        for name, encoder in (("clip", clip), ("text", self.text)):
            if encoder is None:
                continue
            start = time.perf_counter()
            encoder.encode_texts(["warm-up"])
            if encoder is clip and clip is not None:
                clip.encode_images([Image.new("RGB", (32, 32))])
            seconds[name] = time.perf_counter() - start
        return seconds

    def wanted(self) -> dict[str, str]:
        """The model id each dense space must have been built with, by space name."""
        clip = self.clip
        wanted: dict[str, str] = {}
        for space in store_spaces(clip=clip is not None, clip_texts=self.config.models.clip_texts):
            model = self.text if space == SPACE_TEXT else clip
            assert model is not None  # store_spaces names CLIP's spaces only when there is a CLIP model
            wanted[space] = model.model_id
        return wanted

    def settings_to_record(self) -> dict[str, Any]:
        """The model settings to record in the store: specs that reopen the same models from anywhere.

        A model given to the engine is recorded only when the config names that same model.
        """
        models = self.config.models
        spec = parse_clip_spec(models.clip)
        clip = models.clip.strip()
        if spec.kind == "file":
            clip = f"{spec.model_name}@{spec.weights}"
        elif spec.kind == "config":
            clip = f"{spec.config}@{spec.weights}"
        text = models.text
        if Path(text).expanduser().is_dir():
            text = str(Path(text).expanduser().resolve())
        settings: dict[str, Any] = {"models.clip": clip, "models.text": text, "models.clip_texts": models.clip_texts}
        if self._given_clip is not None and spec.model_id != self._given_clip.model_id:
            del settings["models.clip"]
        if self._given_text is not None and build_text_encoder(models).model_id != self._given_text.model_id:
            del settings["models.text"]
        return settings
