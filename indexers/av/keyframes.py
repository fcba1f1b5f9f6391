"""Keyframe selection: shot changes on cheap features, a maximum gap, then de-duplication.

Each sampled frame is reduced to a small feature (hue/saturation/value histograms
of a 64x36 thumbnail plus a 16x9 grey layout). A frame becomes a keyframe when it
differs from the last keyframe by ``threshold`` (a shot change or a slow drift)
once the picture has settled (so a fade or dissolve yields its end, not its
middle), or when ``max_gap_s`` passed since the last one. Blank (uniform) frames
never become keyframes. The candidates are then de-duplicated against every kept
keyframe: by CLIP cosine when an image embedder is given, else by the cheap
feature distance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "FrameFeatures",
    "Keyframe",
    "ShotDetector",
    "change_score",
    "dedup_keyframes",
    "frame_features",
]

_THUMB_W, _THUMB_H = 64, 36
_LAYOUT_W, _LAYOUT_H = 16, 9
_HUE_BINS, _SAT_BINS, _VAL_BINS = 16, 8, 8
_BLANK_SPREAD = 0.02  # grey standard deviation under which a frame is uniform (black, white, flat)
_GREY_SCALE = 2.0  # a grey difference of 0.5 in the layout's 90th percentile counts as a full change


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """Cheap description of a frame: colour histograms, a coarse grey layout, its spread."""

    hue: np.ndarray
    sat: np.ndarray
    val: np.ndarray
    layout: np.ndarray
    spread: float

    @property
    def blank(self) -> bool:
        return self.spread < _BLANK_SPREAD


@dataclass(frozen=True, eq=False)
class Keyframe:
    """A chosen frame: its time, its picture, its cheap features and why it was chosen."""

    t: float
    image: Image.Image
    features: FrameFeatures
    reason: str  # first | shot | gap


def _hist(values: np.ndarray, bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    idx = (values.astype(np.int32) * bins) >> 8
    h = np.bincount(idx.ravel(), weights=None if weights is None else weights.ravel(), minlength=bins)
    total = h.sum()
    return (h / total if total > 0 else h).astype(np.float32)


def frame_features(frame: Any) -> FrameFeatures:
    """Features of an ``av.VideoFrame`` (scaled down by swscale first, so this is cheap)."""
    rgb = frame.to_ndarray(width=_THUMB_W, height=_THUMB_H, format="rgb24")
    return features_from_rgb(rgb)


def features_from_rgb(rgb: np.ndarray) -> FrameFeatures:
    """Features of a ``_THUMB_H x _THUMB_W x 3`` uint8 RGB array."""
    hsv = np.asarray(Image.fromarray(rgb, "RGB").convert("HSV"))
    # grey pixels have no meaningful hue: weight hue by saturation x value
    weight = (hsv[..., 1].astype(np.float32) / 255.0) * (hsv[..., 2].astype(np.float32) / 255.0)
    hue = _hist(hsv[..., 0], _HUE_BINS, weight)
    hue = 0.5 * hue + 0.25 * (np.roll(hue, 1) + np.roll(hue, -1))  # hue is circular: soften bin edges
    grey = rgb.astype(np.float32).mean(axis=2) / 255.0
    fy, fx = _THUMB_H // _LAYOUT_H, _THUMB_W // _LAYOUT_W
    layout = grey.reshape(_LAYOUT_H, fy, _LAYOUT_W, fx).mean(axis=(1, 3))
    return FrameFeatures(
        hue, _hist(hsv[..., 1], _SAT_BINS), _hist(hsv[..., 2], _VAL_BINS), layout, float(grey.std())
    )


def change_score(a: FrameFeatures, b: FrameFeatures) -> float:
    """How different two frames look, in [0, 1]: half colour histograms, half grey layout.

    Hard cuts score about 0.6-0.9, camera drift grows slowly, codec flicker stays under 0.1.
    """
    hist = (
        np.abs(a.hue - b.hue).sum() + np.abs(a.sat - b.sat).sum() + np.abs(a.val - b.val).sum()
    ) / 6.0  # mean of three half-L1 distances
    # 90th percentile rather than mean: an overlay (a title, a slide's new line) changes few cells a lot
    layout = min(1.0, float(np.quantile(np.abs(a.layout - b.layout), 0.9)) * _GREY_SCALE)
    return float(0.5 * hist + 0.5 * layout)


def _to_image(frame: Any, max_px: int) -> Image.Image:
    image = frame.to_image()
    if max(image.size) > max_px:
        image.thumbnail((max_px, max_px), Image.Resampling.BILINEAR)
    return image.convert("RGB")


@dataclass(frozen=True, eq=False)
class _Sample:
    t: float
    frame: Any  # av.VideoFrame
    features: FrameFeatures


class ShotDetector:
    """Streaming cheap-stage selection; feed sampled frames in time order to ``push``.

    A change (score to the last keyframe >= ``threshold``) is taken once the picture
    has settled: when two consecutive samples both differ from the last keyframe
    but not from each other (score < ``threshold / 2``), the first of them is the
    keyframe, so a hard cut is timed at its first frame and a fade at its end. A
    picture still moving after ``max_wait_s`` is taken as it is. ``max_gap_s``
    forces a keyframe in a long static shot.
    """

    def __init__(
        self, threshold: float, max_gap_s: float, max_px: int = 1024, max_wait_s: float = 1.0
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"shot threshold must be in (0, 1], got {threshold}")
        self.threshold, self.max_gap_s, self.max_px, self.max_wait_s = (
            threshold,
            max_gap_s,
            max_px,
            max_wait_s,
        )
        self._last: Keyframe | None = None
        self._prev: _Sample | None = None
        self._change_since: float | None = None

    def _changed(self, feats: FrameFeatures) -> bool:
        return not feats.blank and (
            self._last is None or change_score(feats, self._last.features) >= self.threshold
        )

    def _take(self, sample: _Sample, reason: str) -> Keyframe:
        self._change_since = None
        self._last = Keyframe(sample.t, _to_image(sample.frame, self.max_px), sample.features, reason)
        return self._last

    def push(self, t: float, frame: Any) -> Keyframe | None:
        """The keyframe this sample settles (it may be the previous sample), or None."""
        cur = _Sample(t, frame, frame_features(frame))
        prev, self._prev = self._prev, cur
        if cur.features.blank:
            return None
        reason = "first" if self._last is None else "shot"
        if self._changed(cur.features):
            if self._change_since is None:
                self._change_since = t
            if (
                prev is not None
                and self._changed(prev.features)
                and change_score(cur.features, prev.features) < self.threshold / 2
            ):
                return self._take(prev, reason)
            if t - self._change_since >= self.max_wait_s:
                return self._take(cur, reason)
            return None
        self._change_since = None
        if self._last is not None and t - self._last.t >= self.max_gap_s:
            return self._take(cur, "gap")
        return None

    def finish(self) -> Keyframe | None:
        """At the end of the stream: a change that had not settled yet yields its last sample."""
        if self._change_since is not None and self._prev is not None and self._changed(self._prev.features):
            return self._take(self._prev, "first" if self._last is None else "shot")
        return None

    def select(self, frames: Iterable[tuple[float, Any]]) -> Iterator[Keyframe]:
        """Keyframes of a whole stream, in time order."""
        for t, frame in frames:
            keyframe = self.push(t, frame)
            if keyframe is not None:
                yield keyframe
        keyframe = self.finish()
        if keyframe is not None:
            yield keyframe


def dedup_keyframes(
    keyframes: Iterable[Keyframe],
    embed_images: Callable[[list[Any]], Any] | None,
    min_cosine: float,
    cheap_threshold: float,
    batch: int = 16,
) -> Iterator[Keyframe]:
    """Drop keyframes that look like one already kept.

    With ``embed_images`` (L2-normalised CLIP vectors) a keyframe goes when its
    cosine to a kept one is >= ``min_cosine``; without, when its cheap change
    score to a kept one is < ``cheap_threshold``. Works in batches to bound memory.
    """
    kept_vecs: list[np.ndarray] = []
    kept_feats: list[FrameFeatures] = []
    pending: list[Keyframe] = []

    def flush() -> Iterator[Keyframe]:
        vecs = None
        if embed_images is not None:
            vecs = np.asarray(embed_images([k.image for k in pending]), dtype=np.float32)
        for i, kf in enumerate(pending):
            if vecs is not None:
                v = vecs[i]
                if kept_vecs and float(np.max(np.stack(kept_vecs) @ v)) >= min_cosine:
                    continue
                kept_vecs.append(v)
            elif any(change_score(kf.features, f) < cheap_threshold for f in kept_feats):
                continue
            kept_feats.append(kf.features)
            yield kf
        pending.clear()

    for kf in keyframes:
        pending.append(kf)
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()
