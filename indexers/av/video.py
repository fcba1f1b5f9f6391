"""Video files -> keyframes with the speech around them, plus transcript windows.

The audio track (if any) is transcribed as for audio files and yields ``window``
items ``[t_start, t_end]``. The video track (if any) yields ``keyframe`` items at
shot changes (see ``indexers.av.keyframes``), each with locator ``t`` and the
transcript said within ``video.context_s`` of it, so a keyframe hit shows what
was said then. Work is bounded by ``video.max_seconds`` and ``video.max_frames``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from indexers.av.audio import MediaIngestor, transcribe_source, window_items
from indexers.av.decode import MediaInfo, iter_video_frames
from indexers.av.keyframes import Keyframe, ShotDetector, dedup_keyframes
from indexers.av.transcribe import Transcript
from indexers.base import IngestContext
from retriever.errors import IngestError, LimitExceeded
from retriever.types import Item, ItemKind, Locator, Modality

__all__ = ["VideoIngestor", "keyframe_item"]

VIDEO_TYPES = frozenset(
    {
        "video/mp4",
        "video/quicktime",
        "video/x-matroska",
        "video/webm",
        "video/x-msvideo",
        "video/mpeg",
        "video/ogg",
    }
)


def keyframe_item(kf: Keyframe, transcript: Transcript | None, uri: str, context_s: float) -> Item:
    """A keyframe as an image item carrying the speech within ``context_s`` of its time."""
    meta: dict[str, object] = {"reason": kf.reason}
    text = None
    if transcript is not None:
        near = transcript.between(kf.t - context_s, kf.t + context_s)
        if near:
            text = " ".join(s.text for s in near)
            meta["transcript_span"] = [near[0].start, max(s.end for s in near)]
    return Item(
        Modality.VIDEO, ItemKind.KEYFRAME, Locator(uri, t=round(kf.t, 3)), text=text, image=kf.image, metadata=meta
    )


def _record_streams(info: MediaInfo, ctx: IngestContext) -> None:
    meta = ctx.source_metadata
    meta["container"] = info.format
    if info.duration is not None:
        meta["duration_s"] = round(info.duration, 3)
    if info.video is not None:
        v = info.video
        meta.update(video_codec=v.codec, width=v.width, height=v.height, fps=v.fps and round(v.fps, 3))
    if info.audio is not None:
        a = info.audio
        meta.update(audio_codec=a.codec, sample_rate=a.sample_rate, channels=a.channels)


class VideoIngestor(MediaIngestor):
    """Video files (mp4, mkv, webm, mov, mpg, avi): keyframes + transcript windows."""

    name = "video"
    modality = Modality.VIDEO
    content_types = VIDEO_TYPES

    def ingest(self, path: Path, ctx: IngestContext) -> Iterator[Item]:
        path = Path(path)
        cfg = ctx.config.video
        info = self.probed(path, cfg.max_seconds)
        if info.audio is None and info.video is None:
            kinds = ", ".join(s.kind for s in info.streams) or "none"
            raise IngestError(f"{path.name}: no audio or video stream to index (streams: {kinds})")
        transcript = self._transcript(path, info, ctx)
        _record_streams(info, ctx)  # after the audio pass: the container's duration wins over the track's
        uri = str(path.resolve())
        if transcript is not None:
            audio = ctx.config.audio
            yield from window_items(transcript, uri, Modality.VIDEO, audio.window_min_s, audio.window_max_s)
        if info.video is None:
            ctx.notes.append("no video stream: transcript windows only")
            return
        yield from self._keyframes(path, uri, ctx, transcript)

    def _transcript(self, path: Path, info: MediaInfo, ctx: IngestContext) -> Transcript | None:
        if info.audio is None:
            ctx.notes.append("no audio stream: keyframes without transcript")
            return None
        try:
            transcript = transcribe_source(path, ctx, ctx.config.video.max_seconds)
        except LimitExceeded:
            raise
        except IngestError as exc:
            if info.video is None:
                raise
            ctx.notes.append(f"audio track unreadable, keyframes only: {exc}")
            return None
        return transcript

    def _keyframes(
        self, path: Path, uri: str, ctx: IngestContext, transcript: Transcript | None
    ) -> Iterator[Item]:
        cfg = ctx.config.video
        stats: dict[str, float] = {}
        frames = iter_video_frames(path, cfg.sample_fps, cfg.max_seconds, ctx.deadline, stats)
        detector = ShotDetector(cfg.shot_threshold, cfg.max_gap_s, ctx.config.ingest.preview_px)
        kept = dedup_keyframes(
            detector.select(frames), ctx.embed_images, cfg.dedup_cosine, cfg.shot_threshold / 2
        )
        count = 0
        for kf in kept:
            if count >= cfg.max_frames:
                ctx.notes.append(
                    f"stopped at video.max_frames = {cfg.max_frames} keyframes (t = {kf.t:.1f} s)"
                )
                break
            count += 1
            yield keyframe_item(kf, transcript, uri, cfg.context_s)
        ctx.source_metadata.update(keyframes=count, frames_decoded=int(stats.get("decoded", 0)))
        if stats.get("bad_packets"):
            ctx.notes.append(f"skipped {int(stats['bad_packets'])} corrupt video packet(s)")
        declared, last = ctx.source_metadata.get("duration_s"), stats.get("last_t", 0.0)
        if count < cfg.max_frames and declared and last < declared - max(2.0, 0.1 * declared):
            ctx.notes.append(
                f"video track ends at {last:.1f} s of the {declared:.1f} s declared (truncated?)"
            )
        if count == 0:
            ctx.notes.append("no keyframes: the picture is blank throughout")
