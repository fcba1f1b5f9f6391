"""Synthetic coloured shapes with captions, and a tiny CLIP trained on them.

No CLIP weights ship on PyPI and no model hub is reachable offline, so tests and the
offline demo train a TINY open_clip model (48x48 images, ~3.5M parameters, most of
them the token table) on these shapes for 1500 small steps with the contrastive CLIP
loss (one to two minutes on a CPU core). It is a demo model: it knows 6 colours,
5 shapes, 2 sizes and 9 positions, nothing else. ``ensure_tiny_clip`` caches the
result and returns a spec string that loads through the normal ``ClipEncoder`` path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "DEMO_MODEL_LABEL",
    "SHAPES",
    "TINY_CLIP_CONFIG",
    "TINY_CLIP_STEPS",
    "ShapeSample",
    "ensure_tiny_clip",
    "generate",
    "iter_samples",
    "make_sample",
    "train_tiny_clip",
    "write_images",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 20),
    "purple": (135, 50, 175),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
_H = ("left", "center", "right")
_V = ("top", "middle", "bottom")
DEMO_MODEL_LABEL = "tiny demo CLIP trained on synthetic coloured shapes (not a real-world model)"
DATASET_VERSION = 1


@dataclass(frozen=True)
class ShapeSample:
    """One rendered image and what it shows."""

    image: Image.Image
    colour: str
    shape: str
    size: str  # small | large
    h: str  # left | center | right
    v: str  # top | middle | bottom

    @property
    def label(self) -> str:
        """The short caption: ``a red circle``."""
        return f"a {self.colour} {self.shape}"

    @property
    def position(self) -> str:
        if (self.h, self.v) == ("center", "middle"):
            return "in the middle"
        if self.v == "middle":
            return f"on the {self.h}"
        if self.h == "center":
            return f"at the {self.v}"
        return f"at the {self.v} {self.h}"

    @property
    def caption(self) -> str:
        """The full caption: ``a small red circle at the top left``."""
        return f"a {self.size} {self.colour} {self.shape} {self.position}"

    def captions(self) -> list[str]:
        """Caption variants used in training (all true of the image)."""
        c, s, z, p = self.colour, self.shape, self.size, self.position
        return [f"a {c} {s}", f"a {z} {c} {s}", f"a {c} {s} {p}", self.caption, f"a photo of a {c} {s}", f"{c} {s}"]


def make_sample(rng: random.Random, size: int = 128, colour: str | None = None, shape: str | None = None) -> ShapeSample:
    """Render one sample; attributes not given are drawn from ``rng``."""
    colour = colour or rng.choice(list(COLOURS))
    shape = shape or rng.choice(SHAPES)
    big = rng.random() < 0.5
    radius = size * (rng.uniform(0.26, 0.33) if big else rng.uniform(0.15, 0.19))
    h, v = rng.choice(_H), rng.choice(_V)
    cx, cy = _place(rng, h, size, radius), _place(rng, v, size, radius)
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    fill = tuple(int(np.clip(ch + rng.randint(-20, 20), 0, 255)) for ch in COLOURS[colour])
    _draw_shape(draw, shape, cx, cy, radius, rng.uniform(-0.12, 0.12), fill)
    return ShapeSample(image, colour, shape, "large" if big else "small", h, v)


def _place(rng: random.Random, zone: str, size: int, radius: float) -> float:
    lo, hi = radius + 1, size - radius - 1
    third = {"left": (0.0, 0.4), "top": (0.0, 0.4), "right": (0.6, 1.0), "bottom": (0.6, 1.0)}.get(zone, (0.44, 0.56))
    a, b = max(lo, third[0] * size), min(hi, third[1] * size)
    return rng.uniform(a, b) if a < b else (a + b) / 2


def _background(rng: random.Random, size: int) -> Image.Image:
    base = np.array([rng.randint(170, 250) for _ in range(3)], dtype=np.float32)
    nprng = np.random.default_rng(rng.getrandbits(32))
    noise = nprng.normal(0.0, rng.uniform(3.0, 12.0), size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float,
                fill: tuple[int, ...]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return
    if shape == "square":
        pts = [(r * 0.85, math.pi / 4 + k * math.pi / 2) for k in range(4)]
        pts = [(d * math.sqrt(2), a) for d, a in pts]
    elif shape == "triangle":
        pts = [(r, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif shape == "star":
        pts = [(r if k % 2 == 0 else r * 0.42, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif shape == "cross":
        w = r * 0.34
        xy = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        pts = [(math.hypot(x, y), math.atan2(y, x)) for x, y in xy]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    draw.polygon([(cx + d * math.cos(a + rot), cy + d * math.sin(a + rot)) for d, a in pts], fill=fill)


def iter_samples(seed: int, size: int = 128) -> Iterator[ShapeSample]:
    """An endless deterministic stream of samples for ``seed``."""
    rng = random.Random(seed)
    while True:
        yield make_sample(rng, size)


def generate(n: int, seed: int, size: int = 128, balanced: bool = False) -> list[ShapeSample]:
    """``n`` samples; ``balanced`` cycles through every colour x shape pair in order."""
    rng = random.Random(seed)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if balanced:
        return [make_sample(rng, size, *pairs[i % len(pairs)]) for i in range(n)]
    return [make_sample(rng, size) for _ in range(n)]


def write_images(out_dir: Path, n: int, seed: int, size: int = 256) -> list[Path]:
    """Write ``n`` balanced samples as PNGs named after their caption; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sample in enumerate(generate(n, seed, size, balanced=True)):
        path = out_dir / f"{i:03d}-{sample.caption.replace(' ', '-')}.png"
        sample.image.save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- tiny CLIP

TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 48, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}
TINY_CLIP_STEPS = 1500
_NAME = "tiny-clip"


@dataclass(frozen=True)
class _Training:
    """How the tiny CLIP is trained (part of the cached model's fingerprint)."""

    per_pair: int = 1  # samples of each colour x shape pair in a batch
    pool: int = 2040  # pre-rendered training images
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 30  # steps
    image_px: int = 128  # rendered size, before preprocessing to 48x48


_TRAIN = _Training()


def _fingerprint(steps: int, seed: int) -> str:
    blob = json.dumps({"model": TINY_CLIP_CONFIG, "train": dataclasses.asdict(_TRAIN), "steps": steps, "seed": seed,
                       "data": DATASET_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_tiny_clip(
    cache_dir: Path, steps: int = TINY_CLIP_STEPS, seed: int = 0, progress: Callable[[int, int], None] | None = None
) -> str:
    """Train (or reuse) the tiny CLIP in ``cache_dir``; return its ClipEncoder spec string.

    Files: ``tiny-clip.json`` (open_clip model config) and ``tiny-clip.safetensors``
    (weights; the training fingerprint is in its metadata). Written atomically under a
    lock, so concurrent callers train once. ``progress(step, steps)`` is called only when
    this call trains: with step 0 as training starts, then after every step.
    """
    import portalocker

    cache_dir = Path(cache_dir).absolute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    config_path, weights_path = cache_dir / f"{_NAME}.json", cache_dir / f"{_NAME}.safetensors"
    spec = f"{config_path}@{weights_path}"
    fingerprint = _fingerprint(steps, seed)
    with portalocker.Lock(str(cache_dir / f".{_NAME}.lock"), timeout=900):
        if _cache_valid(config_path, weights_path, fingerprint):
            return spec
        state = train_tiny_clip(steps=steps, seed=seed, progress=progress)
        _atomic_write(config_path, json.dumps(TINY_CLIP_CONFIG, indent=2).encode())
        _save_weights(weights_path, state, {"mmrag_fingerprint": fingerprint, "mmrag_label": DEMO_MODEL_LABEL})
    return spec


def _cache_valid(config_path: Path, weights_path: Path, fingerprint: str) -> bool:
    if not (config_path.is_file() and weights_path.is_file()):
        return False
    from safetensors import SafetensorError, safe_open

    try:
        if json.loads(config_path.read_text(encoding="utf-8")) != TINY_CLIP_CONFIG:
            return False
        with safe_open(str(weights_path), framework="pt") as fh:
            return (fh.metadata() or {}).get("mmrag_fingerprint") == fingerprint
    except (OSError, ValueError, SafetensorError):  # unreadable/corrupt cache files: retrain
        return False


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _save_weights(path: Path, state: dict[str, Any], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    _atomic_write(path, save(tensors, metadata=metadata))


def train_tiny_clip(
    steps: int = TINY_CLIP_STEPS,
    seed: int = 0,
    log: Any = None,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train the tiny CLIP on synthetic shapes; return its state_dict (fp32, CPU).

    ``log`` receives a line every 100 steps; ``progress(step, steps)`` is called with step 0
    before the training data is made and after every step.

    Runs on ``threads`` torch threads (restored afterwards): the model is so small that
    one thread is nearly as fast as two on an idle machine and several times faster on
    a busy one. The caller's global RNG state is left untouched.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _train(steps, seed, log, progress)
    finally:
        torch.set_num_threads(previous)


def _new_tiny_model() -> tuple[Any, Any, Any]:
    import open_clip

    from retriever.encoders.clip import REGISTRY_LOCK, register_model_config

    with tempfile.TemporaryDirectory() as tmp, REGISTRY_LOCK:
        cfg_path = Path(tmp) / f"{_NAME}.json"
        cfg_path.write_text(json.dumps(TINY_CLIP_CONFIG), encoding="utf-8")
        name = register_model_config(cfg_path)
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        return model, preprocess, open_clip.get_tokenizer(name)


def _train(steps: int, seed: int, log: Any, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    import open_clip
    import torch

    started = time.perf_counter()
    if progress is not None:
        progress(0, steps)
    model, preprocess, tokenizer = _new_tiny_model()
    images, tokens = _training_pool(seed, preprocess, tokenizer)
    model.train()
    # The 49k-row token table gets sparse gradients (SparseAdam): only the rows of words
    # seen in a batch change, which halves the step cost of this tiny model.
    model.token_embedding.sparse = True
    table = model.token_embedding.weight
    dense = [p for p in model.parameters() if p is not table]
    opts = [torch.optim.AdamW(dense, lr=_TRAIN.lr, weight_decay=_TRAIN.weight_decay),
            torch.optim.SparseAdam([table], lr=_TRAIN.lr)]
    loss_fn = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = _balanced_batch(images.shape[0], gen)
        variant = torch.randint(0, tokens.shape[1], (idx.shape[0],), generator=gen)
        img_f = model.encode_image(images[idx], normalize=True)
        txt_f = model.encode_text(tokens[idx, variant], normalize=True)
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        for opt in opts:
            opt.zero_grad(set_to_none=True)
            for group in opt.param_groups:
                group["lr"] = _lr(step, steps)
        loss.backward()
        for opt in opts:
            opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if progress is not None:
            progress(step + 1, steps)
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - started:.1f}s)")
    model.token_embedding.sparse = False
    model.eval()
    return model.state_dict()


def _balanced_batch(pool: int, gen: Any) -> Any:
    """Pool indices with ``per_pair`` samples of every colour x shape pair (pool is balanced)."""
    import torch

    pairs = len(COLOURS) * len(SHAPES)
    rounds = torch.randint(0, pool // pairs, (_TRAIN.per_pair, pairs), generator=gen)
    return (rounds * pairs + torch.arange(pairs)).flatten()


def _lr(step: int, steps: int) -> float:
    warm = _TRAIN.warmup
    if step < warm:
        return _TRAIN.lr * (step + 1) / warm
    return _TRAIN.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def _training_pool(seed: int, preprocess: Any, tokenizer: Any) -> tuple[Any, Any]:
    """Preprocessed images (n, 3, 48, 48) and tokenised caption variants (n, k, ctx)."""
    import torch

    samples = generate(_TRAIN.pool, seed=seed * 7919 + 17, size=_TRAIN.image_px, balanced=True)
    images = torch.stack([preprocess(s.image) for s in samples])
    variants = [s.captions() for s in samples]
    flat = tokenizer([c for caps in variants for c in caps])
    return images, flat.view(len(samples), len(variants[0]), -1)
