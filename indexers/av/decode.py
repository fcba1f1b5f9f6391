"""PyAV decoding helpers shared by the audio and video ingestors.

``probe`` reads a container's streams and duration. ``AudioReader`` streams the
best audio track as 16 kHz mono float32 chunks (about ten minutes each, cut at
the quietest moment near the boundary so a word is rarely split), so hours of
audio are never in memory at once. ``iter_video_frames`` decodes the video track
with frame threading and hands out frames sampled at a few per second.
Unreadable input raises ``IngestError`` with what went wrong.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from retriever.errors import IngestError, LimitExceeded

__all__ = [
    "SAMPLE_RATE",
    "AudioChunk",
    "AudioReader",
    "MediaInfo",
    "StreamInfo",
    "check_deadline",
    "decode_audio",
    "iter_video_frames",
    "probe",
]

SAMPLE_RATE = 16_000
_MAX_BAD_PACKETS = 10  # tolerated corrupt packets before a file counts as corrupt ...
_MAX_BAD_FRACTION = 0.05  # ... unless they are under this share of all packets
_MIN_DECODED_SHARE = 0.5  # decoding less than this share of the declared duration means truncated/corrupt


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a container (times in seconds, None when the container does not say)."""

    index: int
    kind: str  # audio | video | subtitle | data | attachment
    codec: str
    duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames: int | None = None
    still_image: bool = False  # cover art ("attached picture") rather than a moving picture


@dataclass(frozen=True)
class MediaInfo:
    """What ``probe`` found in a media file."""

    path: str
    format: str
    duration: float | None
    streams: tuple[StreamInfo, ...]

    @property
    def audio(self) -> StreamInfo | None:
        return next((s for s in self.streams if s.kind == "audio"), None)

    @property
    def video(self) -> StreamInfo | None:
        return next((s for s in self.streams if s.kind == "video" and not s.still_image), None)


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """A piece of decoded audio: mono float32 samples at ``SAMPLE_RATE`` from ``start`` seconds."""

    start: float
    samples: np.ndarray

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.start + self.duration


def check_deadline(deadline: float | None, what: str) -> None:
    """Raise ``LimitExceeded`` when the ``time.monotonic()`` deadline has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise LimitExceeded(f"{what}: ran past the per-file time budget")


def _open(path: Path) -> Any:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise IngestError(f"{path.name}: not a readable audio/video container ({exc})") from exc
    except OSError as exc:
        raise IngestError(f"{path.name}: cannot open ({exc})") from exc


def _stream_info(stream: Any) -> StreamInfo:
    ctx = stream.codec_context
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    info: dict[str, Any] = {}
    if stream.type == "audio":
        info = {"sample_rate": ctx.sample_rate or None, "channels": ctx.channels or None}
    elif stream.type == "video":
        rate = stream.average_rate or stream.guessed_rate
        info = {
            "width": ctx.width or None,
            "height": ctx.height or None,
            "fps": float(rate) if rate else None,
            "still_image": bool(stream.disposition & av.stream.Disposition.attached_pic),
        }
    codec = ctx.name if ctx is not None and ctx.name else "unknown"
    return StreamInfo(stream.index, stream.type, codec, duration, frames=stream.frames or None, **info)


def probe(path: str | Path) -> MediaInfo:
    """Streams and duration of a media file; ``IngestError`` if it cannot be opened."""
    path = Path(path)
    with _open(path) as container:
        streams = tuple(_stream_info(s) for s in container.streams)
        duration = container.duration / av.time_base if container.duration else None
        if duration is None:
            durations = [s.duration for s in streams if s.duration]
            duration = max(durations) if durations else None
        return MediaInfo(str(path), container.format.name, duration, streams)


def _start_offset(container: Any) -> float:
    return container.start_time / av.time_base if container.start_time else 0.0


class _PacketGuard:
    """Counts corrupt packets; fails the file once they are more than a few stray ones."""

    def __init__(self, name: str) -> None:
        self.name, self.bad, self.seen = name, 0, 0

    def decode(self, packet: Any) -> list[Any]:
        self.seen += 1
        try:
            return packet.decode()
        except av.error.FFmpegError as exc:  # decoders report corrupt data under several error codes
            self.bad += 1
            if self.bad > _MAX_BAD_PACKETS and self.bad > _MAX_BAD_FRACTION * self.seen:
                raise IngestError(
                    f"{self.name}: corrupt stream ({self.bad} of {self.seen} packets undecodable; last: {exc})"
                ) from exc
            return []


def _demux(container: Any, stream: Any, name: str) -> Iterator[Any]:
    try:
        yield from container.demux(stream)
    except av.error.FFmpegError as exc:
        raise IngestError(f"{name}: container is corrupt or truncated ({exc})") from exc


class AudioReader:
    """Streams a file's audio as 16 kHz mono float32 ``AudioChunk``s.

    ``chunk_s`` bounds memory (one chunk plus a little); chunks are cut at the
    quietest 100 ms in their last ``search_s`` seconds. ``max_seconds`` raises
    ``LimitExceeded`` once that much audio was decoded; ``deadline`` (a
    ``time.monotonic()`` value) too. After iteration, ``duration`` is the
    decoded length and ``bad_packets`` the corrupt packets skipped.
    """

    def __init__(
        self,
        path: str | Path,
        chunk_s: float = 600.0,
        search_s: float = 30.0,
        max_seconds: float | None = None,
        deadline: float | None = None,
    ) -> None:
        if chunk_s <= 1.0:
            raise ValueError(f"chunk_s must be over 1 second, got {chunk_s}")
        self.path = Path(path)
        self.chunk_len = int(chunk_s * SAMPLE_RATE)
        self.search_len = int(min(search_s, chunk_s / 4) * SAMPLE_RATE)
        self.max_seconds = max_seconds
        self.deadline = deadline
        self.duration = 0.0
        self.bad_packets = 0

    def __iter__(self) -> Iterator[AudioChunk]:
        name = self.path.name
        with _open(self.path) as container:
            if not container.streams.audio:
                raise IngestError(f"{name}: no audio stream (streams: {_kinds(container)})")
            stream = container.streams.audio[0]
            guard = _PacketGuard(name)
            start: float | None = None
            pending: list[np.ndarray] = []
            pending_len = 0
            for samples, t0 in self._samples(container, stream, guard):
                if start is None:
                    start = t0
                pending.append(samples)
                pending_len += len(samples)
                if pending_len >= self.chunk_len + self.search_len:
                    buf = np.concatenate(pending)
                    cut = _quiet_cut(buf, self.chunk_len - self.search_len, self.chunk_len)
                    yield AudioChunk(start, buf[:cut])
                    start += cut / SAMPLE_RATE
                    pending, pending_len = [buf[cut:]], len(buf) - cut
            self.bad_packets = guard.bad
            self._check_complete(container, stream, guard)  # before the last chunk: no work on a bad file
            if pending_len:
                yield AudioChunk(start or 0.0, np.concatenate(pending))

    def _check_complete(self, container: Any, stream: Any, guard: _PacketGuard) -> None:
        name = self.path.name
        if self.duration == 0.0:
            detail = f"{guard.bad} of {guard.seen} packets undecodable" if guard.bad else "no samples"
            raise IngestError(f"{name}: audio stream decodes to nothing ({detail})")
        declared = _declared_duration(container, stream)
        if declared and declared > 5.0 and self.duration < _MIN_DECODED_SHARE * declared:
            raise IngestError(
                f"{name}: corrupt or truncated audio: decoded {self.duration:.1f} s "
                f"of the {declared:.1f} s the file declares"
            )

    def _samples(
        self, container: Any, stream: Any, guard: _PacketGuard
    ) -> Iterator[tuple[np.ndarray, float]]:
        """Resampled sample blocks with the container time of the first one."""
        stream.thread_type = "AUTO"
        resampler = _resampler()
        offset = _start_offset(container)
        first_t: float | None = None
        for packet in _demux(container, stream, self.path.name):
            for frame in guard.decode(packet):
                if first_t is None:
                    first_t = max(0.0, (frame.time or 0.0) - offset)
                frame.pts = None  # timing comes from the sample count; broken pts must not matter
                try:
                    blocks = resampler.resample(frame)
                except ValueError:  # layout/rate changed mid-stream: a fresh resampler follows it
                    resampler = _resampler()
                    blocks = resampler.resample(frame)
                for block in blocks:
                    yield self._count(_mono(block)), first_t
            if guard.seen % 64 == 0:
                check_deadline(self.deadline, f"{self.path.name}: decoding audio")
        for block in resampler.resample(None):
            yield self._count(_mono(block)), first_t or 0.0

    def _count(self, samples: np.ndarray) -> np.ndarray:
        self.duration += len(samples) / SAMPLE_RATE
        if self.max_seconds is not None and self.duration > self.max_seconds:
            raise LimitExceeded(f"{self.path.name}: audio is longer than the {self.max_seconds:g} s limit")
        return samples


def _resampler() -> Any:
    return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)


def _mono(frame: Any) -> np.ndarray:
    return frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)


def _quiet_cut(samples: np.ndarray, lo: int, hi: int) -> int:
    """Index of the middle of the quietest 100 ms frame in ``samples[lo:hi]``."""
    hop = SAMPLE_RATE // 10
    region = samples[lo:hi]
    n = len(region) // hop
    if n < 1:
        return hi
    energy = np.square(region[: n * hop].reshape(n, hop)).mean(axis=1)
    return lo + int(np.argmin(energy)) * hop + hop // 2


def _declared_duration(container: Any, stream: Any) -> float | None:
    """The audio stream's own duration, else the container's when it holds no video."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and not container.streams.video:
        return container.duration / av.time_base
    return None


def _kinds(container: Any) -> str:
    return ", ".join(s.type for s in container.streams) or "none"


def decode_audio(path: str | Path, max_seconds: float | None = None) -> np.ndarray:
    """A whole (short) file's audio as one 16 kHz mono float32 array."""
    chunks = [c.samples for c in AudioReader(path, max_seconds=max_seconds)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def iter_video_frames(
    path: str | Path,
    sample_fps: float,
    max_seconds: float | None = None,
    deadline: float | None = None,
    stats: dict[str, float] | None = None,
) -> Iterator[tuple[float, Any]]:
    """``(t, av.VideoFrame)`` pairs from the first video stream, at most ``sample_fps`` per second.

    Every frame must be decoded (inter-coded streams need it) but only sampled ones
    are handed on; decoding uses frame threads and skips non-reference frames.
    ``stats`` (if given) receives ``decoded`` and ``bad_packets`` counts and ``last_t``.
    """
    path = Path(path)
    stats = stats if stats is not None else {}
    stats.update(decoded=0, bad_packets=0, last_t=0.0)
    step = 1.0 / sample_fps if sample_fps > 0 else 0.0
    with _open(path) as container:
        streams = [
            s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not streams:
            raise IngestError(f"{path.name}: no video stream (streams: {_kinds(container)})")
        stream = streams[0]
        stream.thread_type = "AUTO"
        stream.codec_context.skip_frame = "NONREF"
        offset, rate = _start_offset(container), float(stream.average_rate or stream.guessed_rate or 25)
        guard, next_t = _PacketGuard(path.name), 0.0
        for packet in _demux(container, stream, path.name):
            for frame in guard.decode(packet):
                stats["decoded"] += 1
                t = frame.time - offset if frame.pts is not None else (stats["decoded"] - 1) / rate
                t = stats["last_t"] = max(0.0, t)
                if max_seconds is not None and t > max_seconds:
                    raise LimitExceeded(f"{path.name}: video is longer than the {max_seconds:g} s limit")
                if t + 1e-6 >= next_t:
                    next_t = t + step
                    yield t, frame
            stats["bad_packets"] = guard.bad
            if guard.seen % 32 == 0:
                check_deadline(deadline, f"{path.name}: decoding video")
