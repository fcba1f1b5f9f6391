"""Audio files -> transcript windows a person can jump into.

The audio track is streamed through the transcriber; its timed segments are
grouped into windows of about ``audio.window_min_s``..``window_max_s`` seconds
without ever cutting a segment, and each window becomes an item with locator
``[t_start, t_end]``. Silence or music gives no items (a note says so).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from indexers.av.decode import AudioReader, MediaInfo, probe
from indexers.av.transcribe import Segment, SpeechToText, Transcript, shared_transcriber
from indexers.base import IngestContext
from retriever.errors import LimitExceeded
from retriever.types import Item, ItemKind, Locator, Modality

__all__ = ["AudioIngestor", "context_transcriber", "group_windows", "transcribe_source", "window_items"]

AUDIO_TYPES = frozenset(
    {
        "audio/wav",
        "audio/flac",
        "audio/mpeg",
        "audio/mp4",
        "audio/aac",
        "audio/ogg",
        "audio/webm",
        "audio/x-wav",
    }
)


def group_windows(segments: Sequence[Segment], min_s: float, max_s: float) -> list[list[Segment]]:
    """Consecutive segments grouped into windows of about ``min_s``..``max_s`` seconds.

    A window closes once it spans ``min_s``, before a segment that would stretch it
    past ``max_s``, or at a pause longer than ``min_s``. Segments are never split, so
    a single segment longer than ``max_s`` is a window of its own. A short tail is
    merged into the previous window when the result still fits in ``max_s``.
    """
    if min_s <= 0 or max_s < min_s:
        raise ValueError(f"need 0 < window_min_s <= window_max_s, got {min_s}..{max_s}")
    windows: list[list[Segment]] = []
    cur: list[Segment] = []
    for seg in sorted(segments, key=lambda s: (s.start, s.end)):
        if cur:
            span = cur[-1].end - cur[0].start
            if span >= min_s or seg.end - cur[0].start > max_s or seg.start - cur[-1].end > min_s:
                windows.append(cur)
                cur = []
        cur.append(seg)
    if cur:
        last = windows[-1] if windows else None
        if last is not None and cur[-1].end - last[0].start <= max_s and cur[0].start - last[-1].end <= min_s:
            last.extend(cur)
        else:
            windows.append(cur)
    return windows


def window_items(
    transcript: Transcript, uri: str, modality: Modality, min_s: float, max_s: float
) -> Iterator[Item]:
    """One ``window`` item per group of segments, its locator the group's time span."""
    limit = transcript.duration or None
    for group in group_windows(transcript.segments, min_s, max_s):
        start, end = group[0].start, max(s.end for s in group)
        if limit is not None:
            end = min(end, limit)
            start = min(start, end)
        text = " ".join(s.text for s in group)
        yield Item(
            modality,
            ItemKind.WINDOW,
            Locator(uri, t_start=start, t_end=end),
            text,
            metadata={"segments": len(group)},
        )


def context_transcriber(ctx: IngestContext) -> SpeechToText:
    """The pipeline's shared transcriber, else one built from the config (and cached on ctx)."""
    tr = ctx.transcriber
    if tr is not None:
        if not isinstance(tr, SpeechToText):
            raise TypeError(
                "IngestContext.transcriber must implement indexers.av.transcribe.SpeechToText "
                f"(transcribe_chunks and transcribe_file), got {type(tr).__name__}"
            )
        return tr
    shared = shared_transcriber(ctx.config.audio, ctx.config.models.device)
    ctx.transcriber = shared
    return shared


def transcribe_source(path: Path, ctx: IngestContext, max_seconds: float) -> Transcript:
    """Transcribe a file's audio track, recording language, model and duration on the source."""
    reader = AudioReader(path, max_seconds=max_seconds, deadline=ctx.deadline)
    transcript = context_transcriber(ctx).transcribe_chunks(reader, ctx.deadline)
    ctx.source_metadata.update(
        language=transcript.language,
        model=transcript.model,
        duration_s=round(reader.duration, 3),
        segments=len(transcript.segments),
    )
    if reader.bad_packets:
        ctx.notes.append(f"skipped {reader.bad_packets} corrupt audio packet(s)")
    if not transcript.segments:
        ctx.notes.append("no speech detected in the audio (silence or music): no transcript items")
    return transcript


def check_duration(info: MediaInfo, max_seconds: float, name: str) -> None:
    if info.duration is not None and info.duration > max_seconds:
        raise LimitExceeded(f"{name}: {info.duration:.0f} s long, above the {max_seconds:g} s limit")


class MediaIngestor:
    """What the audio and video ingestors share: their content types (and any ``audio/*`` or
    ``video/*`` type), and a probe of the file that refuses one over the duration limit."""

    name: str
    modality: Modality
    content_types: frozenset[str]

    def accepts(self, path: Path, content_type: str) -> bool:
        return content_type in self.content_types or content_type.startswith(f"{self.modality.value}/")

    @staticmethod
    def probed(path: Path, max_seconds: float) -> MediaInfo:
        info = probe(path)
        check_duration(info, max_seconds, path.name)
        return info


class AudioIngestor(MediaIngestor):
    """Speech in audio files (wav, flac, mp3, m4a/aac, ogg/opus) as timed transcript windows."""

    name = "audio"
    modality = Modality.AUDIO
    content_types = AUDIO_TYPES

    def ingest(self, path: Path, ctx: IngestContext) -> Iterator[Item]:
        path = Path(path)
        cfg = ctx.config.audio
        self.probed(path, cfg.max_seconds)
        transcript = transcribe_source(path, ctx, cfg.max_seconds)
        yield from window_items(
            transcript, str(path.resolve()), Modality.AUDIO, cfg.window_min_s, cfg.window_max_s
        )
