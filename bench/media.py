"""Media throughput on the shared eval clips: transcription speed and keyframe selection speed.

Run from the repository root::

    python bench/media.py [--rounds 2] [--dir ../shared/eval]

Measures:

* transcription real-time factor: seconds of audio per second of wall time (higher is
  faster; 10x means an hour of audio takes six minutes), for decode + faster-whisper
  (default tiny.en, int8 on CPU / float16 on CUDA, VAD on) over every clip in ``audio/``
  and the GRID clips in ``video/``; model load time apart. The normalised WER of the same
  run is printed alongside, so speed is never bought with accuracy unnoticed;
* video keyframe selection: frames of the video processed per second of wall time
  (decode with frame threads + sampling at ``video.sample_fps`` + cheap features + shot
  detection + fallback de-duplication), against raw PyAV decode of every frame (frame
  threads, no conversion) measured in the same run - the ceiling it is compared to.

Each figure is the best of ``--rounds`` passes (CPU time is printed too, as other
processes on a shared machine inflate wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np

from indexers.av.keyframes import ShotDetector, dedup_keyframes
from indexers.av.decode import SAMPLE_RATE, AudioChunk, AudioReader, decode_audio, iter_video_frames
from indexers.av.transcribe import Transcriber
from retriever.config import AudioConfig, VideoConfig, eval_data_dir
from retriever.metrics import corpus_wer


def _best(fn: Callable[[], object], rounds: int) -> tuple[float, float, object]:
    """Best wall and CPU seconds of ``rounds`` calls, and the last result."""
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, result


def bench_transcription(data: Path, rounds: int) -> float:
    refs = json.loads((data / "audio" / "transcripts.json").read_text())
    clips = [(data / "audio" / name, ref["text"]) for name, ref in sorted(refs.items())]
    video_refs = json.loads((data / "video" / "video_annotations.json").read_text())
    clips += [
        (data / "video" / n, a["spoken_text"]) for n, a in sorted(video_refs.items()) if a.get("spoken_text")
    ]
    tr = Transcriber(AudioConfig())
    t0 = time.perf_counter()
    tr.load()  # timed apart from transcription
    print(f"transcription: {tr.model_id}, model load {time.perf_counter() - t0:.2f} s")
    total_audio = total_wall = total_cpu = 0.0
    pairs = []
    for path, ref in clips:
        wall, cpu, transcript = _best(lambda p=path: tr.transcribe_chunks(AudioReader(p)), rounds)
        seconds = transcript.duration
        total_audio, total_wall, total_cpu = total_audio + seconds, total_wall + wall, total_cpu + cpu
        pairs.append((ref, transcript.text))
        print(f"  {path.name:48s} {seconds:6.2f} s audio  {wall:5.2f} s wall  RTF {seconds / wall:6.1f}x")
    print(
        f"  all {len(clips)} clips one by one: {total_audio:.1f} s audio in {total_wall:.2f} s wall "
        f"({total_cpu:.2f} s CPU): real-time factor {total_audio / total_wall:.1f}x; WER {corpus_wer(pairs):.1%}"
    )
    # whisper pads every call to a 30 s window, so short clips mostly measure that overhead;
    # a long recording (the clips end to end, 1 s apart) shows the steady-state speed
    joined = np.concatenate(
        [np.concatenate([decode_audio(p), np.zeros(SAMPLE_RATE, np.float32)]) for p, _ in clips]
    )
    chunks = [AudioChunk(0.0, joined)]
    wall, cpu, transcript = _best(lambda: tr.transcribe_chunks(chunks), rounds)
    ref = " ".join(r for _, r in clips)
    rtf = transcript.duration / wall
    print(
        f"  one {transcript.duration:.1f} s recording: {wall:.2f} s wall ({cpu:.2f} s CPU): "
        f"real-time factor {rtf:.1f}x; WER {corpus_wer([(ref, transcript.text)]):.1%}"
    )
    return rtf


def _raw_decode(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def _select(path: Path, cfg: VideoConfig) -> int:
    frames = iter_video_frames(path, cfg.sample_fps)
    detector = ShotDetector(cfg.shot_threshold, cfg.max_gap_s)
    return sum(
        1 for _ in dedup_keyframes(detector.select(frames), None, cfg.dedup_cosine, cfg.shot_threshold / 2)
    )


def bench_keyframes(data: Path, rounds: int) -> float:
    cfg = VideoConfig()
    names = ["big_buck_bunny_0_30.webm", "big_buck_bunny_small.mp4", "grid_bbaf2n.mpg"]
    print(f"keyframe selection (sample {cfg.sample_fps:g} fps, threshold {cfg.shot_threshold}, no CLIP):")
    all_frames = raw_total = sel_total = 0.0
    for name in names:
        path = data / "video" / name
        raw_wall, raw_cpu, frames = _best(lambda p=path: _raw_decode(p), rounds)
        sel_wall, sel_cpu, keyframes = _best(lambda p=path: _select(p, cfg), rounds)
        raw_fps, sel_fps = frames / raw_wall, frames / sel_wall
        all_frames, raw_total, sel_total = all_frames + frames, raw_total + raw_wall, sel_total + sel_wall
        print(
            f"  {name:28s} {frames:4d} frames: raw decode {raw_fps:7.1f} fps ({raw_cpu:.2f} s CPU), "
            f"selection {sel_fps:7.1f} fps ({sel_cpu:.2f} s CPU) = {sel_fps / raw_fps:.2f}x raw; "
            f"{keyframes} keyframes"
        )
    ratio = (all_frames / sel_total) / (all_frames / raw_total)
    print(
        f"  all: selection {all_frames / sel_total:.1f} fps vs raw decode {all_frames / raw_total:.1f} fps = {ratio:.2f}x"
    )
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=eval_data_dir(), help="evaluation data root")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not (args.dir / "audio" / "transcripts.json").is_file():
        sys.exit(f"evaluation data not found under {args.dir}")
    rtf = bench_transcription(args.dir, args.rounds)
    ratio = bench_keyframes(args.dir, args.rounds)
    print(
        f"verdict: transcription runs {rtf:.1f}x faster than real time on a long recording; keyframe "
        f"selection runs at {ratio:.2f}x raw decode speed ({'decode-bound' if ratio > 0.6 else 'feature-bound'})"
    )


if __name__ == "__main__":
    main()
