"""Video: keyframes at shot changes, speech windows and keyframe transcripts, containers, limits.

Shared clips (Big Buck Bunny, GRID) are ingested once per session. Synthetic clips with
known shots are encoded here with PyAV, so the expected keyframe times are exact.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import av
import numpy as np
import pytest

from indexers.base import IngestContext
from indexers.av.keyframes import ShotDetector, change_score, dedup_keyframes
from indexers.av.decode import SAMPLE_RATE, decode_audio, iter_video_frames, probe
from indexers.av.video import VideoIngestor
from retriever.errors import IngestError, LimitExceeded
from retriever.metrics import normalize_text, wer
from retriever.types import Item, Modality

GRID = ["grid_id2_vcd_swwp2s.mpg", "grid_pwij3p.mpg", "grid_lrwp9a.mpg"]
# GRID word alignment of swwp2s (1/25000 s units): speech from "set" 12250 to "soon" 55250
SWWP2S_SPEECH = (12250 / 25000, 55250 / 25000)
SCENES = [(200, 40, 40), (30, 60, 200), (40, 180, 60)]  # red, blue, green backgrounds


# ---------------------------------------------------------------------------- helpers


def _scene(i: int, w: int = 160, h: int = 120) -> np.ndarray:
    """A distinct picture per shot: a coloured background with a shape in a shot-specific place."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = SCENES[i % len(SCENES)]
    x0, y0 = 20 + 40 * (i % 3), 20 + 20 * (i % 2)
    img[y0 : y0 + 50, x0 : x0 + 50] = (255, 255, 255) if i % 2 == 0 else (10, 10, 10)
    return img


def write_video(
    path: Path,
    shots: list[int],
    shot_s: float,
    fmt: str,
    codec: str,
    fps: int = 10,
    speech: np.ndarray | None = None,
) -> Path:
    """Encode shots of static pictures (``_scene(i)`` for i in ``shots``), optionally with a mono track."""
    frames = [_scene(i) for i in shots for _ in range(round(shot_s * fps))]
    with av.open(str(path), "w", format=fmt) as out:
        fast = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx" else {}
        vs = out.add_stream(codec, rate=fps, options=fast)
        vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        packets = []
        for arr in frames:
            packets += vs.encode(av.VideoFrame.from_ndarray(arr, format="rgb24"))
        packets += vs.encode(None)
        if speech is not None:
            aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            frame = av.AudioFrame.from_ndarray(
                (speech * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            packets += [*aus.encode(frame), *aus.encode(None)]
        for p in packets:
            out.mux(p)
    return path


def _kinds(items: list[Item], kind: str) -> list[Item]:
    return [i for i in items if i.kind == kind]


# ---------------------------------------------------------------------------- shared clips


@pytest.fixture(scope="session")
def annotations(video_dir: Path) -> dict:
    return json.loads((video_dir / "video_annotations.json").read_text())


@pytest.fixture(scope="session")
def bunny(video_dir: Path, ingest_ctx) -> tuple[list[Item], IngestContext]:
    ctx = ingest_ctx("video")
    return list(VideoIngestor().ingest(video_dir / "big_buck_bunny_0_30.webm", ctx)), ctx


@pytest.fixture(scope="session")
def grid(video_dir: Path, ingest_ctx) -> dict[str, tuple[list[Item], IngestContext]]:
    out = {}
    for name in GRID:
        ctx = ingest_ctx("video")
        out[name] = (list(VideoIngestor().ingest(video_dir / name, ctx)), ctx)
    return out


def _shot_index(t: float, shown: list[dict]) -> int | None:
    for i, entry in enumerate(shown):
        lo, _, hi = entry["t"].lstrip("~").partition("-")
        lo_f, hi_f = float(lo), float(hi.lstrip("~") or lo)
        if lo_f - 0.5 <= t <= hi_f + 0.5:
            return i
    return None


def test_bunny_keyframes_are_distinct_shots_inside_the_clip(bunny, annotations) -> None:
    items, ctx = bunny
    keyframes = _kinds(items, "keyframe")
    frames = ctx.source_metadata["frames_decoded"]
    duration = annotations["big_buck_bunny_0_30.webm"]["duration_s"]
    times = [k.locator.t for k in keyframes]
    print(f"\nBig Buck Bunny keyframes at {times} of {frames} frames")
    assert 1 < len(keyframes) <= frames // 20
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(0.0 <= t <= duration for t in times)
    shots = {_shot_index(t, annotations["big_buck_bunny_0_30.webm"]["shown"]) for t in times} - {None}
    assert len(shots) >= 5  # of the 9 annotated moments (meadow, stream, bird, burrow, title, ...)
    for k in keyframes:
        assert k.modality is Modality.VIDEO and k.image.mode == "RGB" and max(k.image.size) <= 1024
        assert np.asarray(k.image.convert("L"), np.float32).std() > 5  # no black fade-in frame
        assert k.text is None and "transcript_span" not in k.metadata  # music only: no speech
    assert not _kinds(items, "window")
    assert any("no speech" in n for n in ctx.notes)
    assert ctx.source_metadata["video_codec"] == "vp8" and ctx.source_metadata["width"] == 1280


def test_bunny_consecutive_keyframes_differ(bunny) -> None:
    from indexers.av.keyframes import features_from_rgb

    feats = [features_from_rgb(np.asarray(k.image.resize((64, 36)))) for k in _kinds(bunny[0], "keyframe")]
    for a, b in itertools.pairwise(feats):
        assert change_score(a, b) > 0.15


def test_small_mp4_with_51_audio(ingest_ctx, video_dir: Path) -> None:
    ctx = ingest_ctx("video")
    items = list(VideoIngestor().ingest(video_dir / "big_buck_bunny_small.mp4", ctx))
    keyframes = _kinds(items, "keyframe")
    assert len(keyframes) >= 1 and not _kinds(items, "window")
    assert all(0.0 <= k.locator.t <= 5.312 for k in keyframes)
    assert ctx.source_metadata["channels"] == 6 and ctx.source_metadata["audio_codec"] == "aac"
    assert ctx.source_metadata["duration_s"] == pytest.approx(5.312, abs=0.01)


def test_grid_clip_gives_keyframe_and_spoken_window(grid, annotations) -> None:
    for name, (items, ctx) in grid.items():
        spoken = annotations[name]["spoken_text"]
        duration = annotations[name]["duration_s"]
        windows, keyframes = _kinds(items, "window"), _kinds(items, "keyframe")
        assert len(windows) == 1 and keyframes, name
        win = windows[0]
        assert win.modality is Modality.VIDEO and win.image is None
        assert 0.0 <= win.locator.t_start < win.locator.t_end <= duration + 0.05
        assert wer(spoken, win.text) <= 0.34, (name, win.text)  # at most 2 of the 6 GRID words wrong
        for k in keyframes:
            assert 0.0 <= k.locator.t <= duration and k.image is not None
            assert k.text == win.text  # the speech within 10 s of t is the whole utterance
            a, b = k.metadata["transcript_span"]
            assert win.locator.t_start <= a <= b <= win.locator.t_end
        assert (
            ctx.source_metadata["model"] == "faster-whisper:tiny.en"
            and ctx.source_metadata["language"] == "en"
        )


def test_grid_window_span_matches_the_word_alignment(grid) -> None:
    win = _kinds(grid["grid_id2_vcd_swwp2s.mpg"][0], "window")[0]
    start, end = SWWP2S_SPEECH
    assert start - 0.4 <= win.locator.t_start <= start + 0.2
    assert end - 0.3 <= win.locator.t_end <= end + 0.4
    assert normalize_text(win.text).split()[-1] == "soon"


# ---------------------------------------------------------------------------- synthetic clips


@pytest.mark.parametrize(
    ("suffix", "fmt", "codec", "fps"),
    [
        ("mp4", "mp4", "libx264", 10),
        ("mkv", "matroska", "libx264", 10),
        ("webm", "webm", "libvpx", 10),
        ("mov", "mov", "mpeg4", 10),
        ("avi", "avi", "mpeg4", 10),
        ("mpg", "mpeg", "mpeg1video", 25),
    ],
)
def test_containers_and_shot_times(
    tmp_path: Path, suffix: str, fmt: str, codec: str, fps: int, ingest_ctx
) -> None:
    path = write_video(tmp_path / f"shots.{suffix}", [0, 1, 2, 1], 1.5, fmt, codec, fps=fps)
    ctx = ingest_ctx("video")
    items = list(VideoIngestor().ingest(path, ctx))
    times = [i.locator.t for i in items]
    assert all(i.kind == "keyframe" for i in items)
    # shots start at 0, 1.5, 3.0, 4.5; the 4th repeats the 2nd and is dropped as a duplicate
    assert len(times) == 3, times
    for t, shot_start in zip(times, (0.0, 1.5, 3.0)):
        assert shot_start <= t <= shot_start + 0.6, times
    for item, scene in zip(items, (0, 1, 2)):
        corner = np.asarray(item.image)[2:10, 2:10].reshape(-1, 3).mean(axis=0)
        assert np.abs(corner - SCENES[scene]).max() < 25
    assert any("no audio stream" in n for n in ctx.notes)


def test_keyframe_carries_only_nearby_speech(tmp_path: Path, audio_dir: Path, ingest_ctx) -> None:
    audio = audio_dir / "librispeech_test-clean_4507-16021-0012.wav"
    clip = decode_audio(audio)  # "why should one halt on the way", 2.7 s
    track = np.zeros(12 * SAMPLE_RATE, np.float32)
    track[8 * SAMPLE_RATE : 8 * SAMPLE_RATE + len(clip)] = clip
    path = write_video(tmp_path / "talk.mkv", [0, 1, 2], 4.0, "matroska", "libx264", speech=track)
    items = list(VideoIngestor().ingest(path, ingest_ctx("video", context_s=2.0)))
    windows, keyframes = _kinds(items, "window"), _kinds(items, "keyframe")
    assert len(windows) == 1 and len(keyframes) == 3
    # the words are at 8.2-10.2 s; whisper's segment times are good to about half a second
    assert 7.8 <= windows[0].locator.t_start <= 8.7 and 10.0 <= windows[0].locator.t_end <= 11.5
    assert normalize_text(windows[0].text) == "why should one halt on the way"
    assert [k.text is not None for k in keyframes] == [False, False, True]
    a, b = keyframes[2].metadata["transcript_span"]
    assert 7.8 <= a < b <= 11.5
    assert keyframes[2].locator.render().endswith("@ 00:08")


def test_audio_only_video_gives_windows(tmp_path: Path, audio_dir: Path, ingest_ctx, encode_audio) -> None:
    path = encode_audio(decode_audio(audio_dir / "jfk.flac"), tmp_path / "speech_only.mp4", "mp4", "aac")
    ctx = ingest_ctx("video")
    items = list(VideoIngestor().ingest(path, ctx))
    assert items and all(i.kind == "window" and i.modality is Modality.VIDEO for i in items)
    assert "fellow americans" in normalize_text(" ".join(i.text for i in items))
    assert any("no video stream" in n for n in ctx.notes)


def test_static_shot_gap_frames_and_dedup(tmp_path: Path) -> None:
    path = write_video(tmp_path / "static.mkv", [0], 25.0, "matroska", "libx264", fps=2)
    candidates = list(ShotDetector(0.35, 10.0).select(iter_video_frames(path, 4.0)))
    assert [k.reason for k in candidates] == ["first", "gap", "gap"]
    times = [k.t for k in candidates]
    assert times[0] < 0.1 and times[1] - times[0] == pytest.approx(10.0, abs=1.0)
    assert times[2] - times[1] == pytest.approx(10.0, abs=1.0)
    # cheap-feature fallback: identical pictures collapse to one
    assert len(list(dedup_keyframes(candidates, None, 0.95, 0.175))) == 1
    # an image embedder that tells the frames apart keeps them all; one that cannot, keeps one
    rng = np.random.default_rng(0)

    def distinct(images: list) -> np.ndarray:
        v = rng.normal(size=(len(images), 16))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def same(images: list) -> np.ndarray:
        return np.tile(np.eye(1, 16), (len(images), 1))

    assert len(list(dedup_keyframes(candidates, distinct, 0.95, 0.175, batch=2))) == 3
    assert len(list(dedup_keyframes(candidates, same, 0.95, 0.175, batch=2))) == 1


def test_ingestor_uses_the_image_embedder(tmp_path: Path, ingest_ctx) -> None:
    path = write_video(tmp_path / "shots.mkv", [0, 1, 2], 1.5, "matroska", "libx264")
    seen: list[int] = []

    def embed(images: list) -> np.ndarray:
        seen.append(len(images))
        return np.tile(np.eye(1, 8), (len(images), 1))  # claims every frame looks alike

    ctx = ingest_ctx("video")
    ctx.embed_images = embed
    items = list(VideoIngestor().ingest(path, ctx))
    assert sum(seen) == 3 and len(items) == 1


def test_max_frames_limit_and_note(tmp_path: Path, ingest_ctx) -> None:
    path = write_video(tmp_path / "shots.mp4", [0, 1, 2], 1.0, "mp4", "libx264")
    ctx = ingest_ctx("video", max_frames=2)
    items = list(VideoIngestor().ingest(path, ctx))
    assert len(items) == 2 and any("max_frames" in n for n in ctx.notes)


def test_duration_limit_deadline_and_corrupt_input(tmp_path: Path, ingest_ctx, video_dir: Path) -> None:
    bunny = video_dir / "big_buck_bunny_0_30.webm"
    with pytest.raises(LimitExceeded, match="limit"):
        list(VideoIngestor().ingest(bunny, ingest_ctx("video", max_seconds=10.0)))
    ctx = ingest_ctx("video")
    ctx.deadline = time.monotonic() - 1.0
    with pytest.raises(LimitExceeded):
        list(VideoIngestor().ingest(bunny, ctx))
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + np.random.default_rng(3).bytes(50_000))
    with pytest.raises(IngestError, match="bad.webm"):
        list(VideoIngestor().ingest(bad, ingest_ctx("video")))


def test_truncated_webm_keeps_its_first_half_with_a_note(
    tmp_path: Path, ingest_ctx, video_dir: Path
) -> None:
    raw = (video_dir / "big_buck_bunny_0_30.webm").read_bytes()
    path = tmp_path / "half.webm"
    path.write_bytes(raw[: len(raw) // 2])  # a WebM prefix is a valid, shorter stream
    ctx = ingest_ctx("video")
    items = list(VideoIngestor().ingest(path, ctx))
    assert items and all(0.0 <= i.locator.t < 16.0 for i in items)
    assert any("truncated" in n for n in ctx.notes)


def test_probe_reports_streams(video_dir: Path) -> None:
    info = probe(video_dir / "grid_bbaf2n.mpg")
    assert info.video is not None and info.video.codec == "mpeg1video" and info.video.width == 360
    assert info.audio is not None and info.audio.codec == "mp2"
    assert info.duration == pytest.approx(2.98, abs=0.05)


# ---------------------------------------------------------------------------- engine


def test_search_for_a_spoken_phrase_finds_its_clip_window(
    tmp_path: Path, video_dir: Path, open_engine, transcriber
) -> None:
    corpus = tmp_path / "videos"
    corpus.mkdir()
    names = ["grid_id2_vcd_swwp2s.mpg", "grid_swiz3n.mpg", "grid_sbwe5n.mpg", "grid_pwij3p.mpg"]
    for name in names:
        (corpus / name).write_bytes((video_dir / name).read_bytes())
    with open_engine(tmp_path / "store", transcriber=transcriber) as eng:
        report = eng.ingest([corpus])
        assert report.added == len(names) and not report.failed
        hits = eng.search(text="set white with p two soon", k=10)
        assert hits[0].source_name == "grid_id2_vcd_swwp2s.mpg", [h.citation for h in hits]
        windows = [h for h in hits if h.kind == "window"]
        first = windows[0]
        assert first.source_name == "grid_id2_vcd_swwp2s.mpg"
        assert hits.index(first) <= 1  # the window, or the keyframe carrying the same words, then it
        start, end = SWWP2S_SPEECH
        loc = first.locator
        assert start - 0.4 <= loc.t_start <= start + 0.2 and end - 0.3 <= loc.t_end <= end + 0.4
        assert first.citation == "grid_id2_vcd_swwp2s.mpg @ 00:00–00:02"
        keyframes = [h for h in hits if h.kind == "keyframe" and h.source_name == "grid_id2_vcd_swwp2s.mpg"]
        assert keyframes and keyframes[0].locator.t is not None
