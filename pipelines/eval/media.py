"""``mmrag eval asr`` (word error rate) and ``mmrag eval captions`` (CLIP Recall@K).

ASR: every clip named in the transcripts JSON (``{file: "reference"}`` or
``{file: {"text": "reference", ...}}``) is transcribed with the configured speech
model; WER uses ``retriever.metrics.normalize_text`` on both sides (lower case, no
punctuation, numbers as words, fillers dropped), per file and pooled over all words.

Captions: the standard protocol on an image-caption JSON (``{file: [captions]}``):
every caption is a text->image query whose target is its image, every image an
image->text query whose targets are its captions; Recall@K is the share of queries
with a target in the top K. Chance levels are reported next to the scores.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.eval.results import (
    Advance,
    EvalDataError,
    EvalResult,
    dataset_fingerprint,
    format_table,
    no_advance,
)
from retriever.config import Config
from retriever.errors import ConfigError
from retriever.metrics import EditCounts, corpus_wer, hit_at_k, normalize_text, word_edits

__all__ = ["caption_recalls", "evaluate_asr", "evaluate_captions", "load_captions", "load_transcripts"]


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise EvalDataError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise EvalDataError(f"{what} file {path} is not valid JSON: {exc}") from None


def _find(root: Path, name: str) -> Path | None:
    """``root/name``, else the one file called ``name`` anywhere under ``root``."""
    direct = root / name
    if direct.is_file():
        return direct
    found = [p for p in root.rglob(Path(name).name) if p.is_file()]
    if len(found) > 1:
        raise EvalDataError(f"{name} is ambiguous under {root}: {', '.join(str(p) for p in found[:3])}")
    return found[0] if found else None


# ---- ASR ---------------------------------------------------------------------------


def load_transcripts(path: Path) -> dict[str, str]:
    """``{file: reference text}`` from ``{file: str}`` or ``{file: {"text": str, ...}}``."""
    data = _read_json(path, "transcripts")
    if not isinstance(data, dict) or not data:
        raise EvalDataError(f"{path}: expected a JSON object mapping audio file -> reference text")
    refs: dict[str, str] = {}
    for name, value in data.items():
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(text, str):
            raise EvalDataError(f"{path}: entry {name!r} needs a reference string (or an object with 'text'), "
                                f"got {type(text).__name__}")
        refs[str(name)] = text
    return refs


@dataclass(frozen=True)
class _ClipScore:
    """One transcribed clip against its reference."""

    file: str
    reference: str
    hypothesis: str
    edits: EditCounts
    seconds: float

    @property
    def wer(self) -> float:
        """Word error rate; a clip whose reference has no words scores 1 if anything was heard."""
        edits = self.edits
        return edits.errors / edits.ref_words if edits.ref_words else float(edits.insertions > 0)

    def to_row(self) -> dict[str, Any]:
        edits = self.edits
        return {"file": self.file, "wer": self.wer, "ref_words": edits.ref_words,
                "substitutions": edits.substitutions, "deletions": edits.deletions, "insertions": edits.insertions,
                "reference": self.reference, "hypothesis": self.hypothesis, "seconds": round(self.seconds, 3)}


def _score_clip(name: str, path: Path, reference: str, transcriber: Any) -> _ClipScore:
    started = time.perf_counter()
    hypothesis = transcriber.transcribe_file(path).text
    edits = word_edits(normalize_text(reference).split(), normalize_text(hypothesis).split())
    return _ClipScore(name, reference, hypothesis, edits, time.perf_counter() - started)


def evaluate_asr(
    directory: Path, transcripts: Path, config: Config, advance: Advance = no_advance, transcriber: Any = None
) -> EvalResult:
    """Transcribe each referenced clip under ``directory`` and score it."""
    from indexers.av.transcribe import Transcriber

    refs = load_transcripts(transcripts)
    files = {name: _find(directory, name) for name in refs}
    missing = sorted(n for n, p in files.items() if p is None)
    present = {n: p for n, p in files.items() if p is not None}
    if not present:
        raise EvalDataError(f"none of the {len(refs)} files in {transcripts.name} is under {directory}")
    tr = transcriber or Transcriber(config.audio, device=config.models.device)
    scores: list[_ClipScore] = []
    t0 = time.perf_counter()
    for name, path in present.items():
        scores.append(_score_clip(name, path, refs[name], tr))
        advance(1)
    overall = corpus_wer((c.reference, c.hypothesis) for c in scores)
    words = sum(c.edits.ref_words for c in scores)
    table = format_table(["file", "WER", "words", "hypothesis"],
                         [[c.file, c.wer, c.edits.ref_words, _short(c.hypothesis)] for c in scores])
    table += f"\noverall WER {overall:.4f} over {words} reference words in {len(scores)} files"
    if missing:
        table += f"\nmissing ({len(missing)}): {', '.join(missing)}"
    return EvalResult(
        task="asr",
        dataset={"path": str(directory), "transcripts": str(transcripts), "files": len(scores),
                 "fingerprint": dataset_fingerprint([transcripts, *present.values()], _common_root(directory, transcripts))},
        settings={"audio": {"backend": config.audio.backend, "beam_size": config.audio.beam_size,
                            "vad": config.audio.vad, "language": config.audio.language},
                  "normalization": "retriever.metrics.normalize_text"},
        models={"asr": tr.model_id},
        metrics={"wer": overall, "mean_file_wer": float(np.mean([c.wer for c in scores])), "ref_words": words},
        rows=[c.to_row() for c in scores],
        notes=[f"missing file: {m}" for m in missing],
        seconds={"total": time.perf_counter() - t0},
        table=table,
    )


def _common_root(a: Path, b: Path) -> Path:
    import os

    return Path(os.path.commonpath([a.resolve(), b.resolve()]))


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ---- captions ------------------------------------------------------------------------


def load_captions(path: Path) -> dict[str, list[str]]:
    data = _read_json(path, "captions")
    if not isinstance(data, dict) or not data:
        raise EvalDataError(f"{path}: expected a JSON object mapping image file -> list of captions")
    out: dict[str, list[str]] = {}
    for name, caps in data.items():
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise EvalDataError(f"{path}: entry {name!r} needs a non-empty list of caption strings")
        out[str(name)] = list(caps)
    return out


def caption_recalls(
    image_vecs: np.ndarray, text_vecs: np.ndarray, caption_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Text->image and image->text Recall@K from L2-normalised embeddings.

    ``caption_image[j]`` is the row of ``image_vecs`` that caption ``j`` describes.
    """
    sims = np.asarray(text_vecs, np.float32) @ np.asarray(image_vecs, np.float32).T  # captions x images
    owner = np.asarray(caption_image)
    out: dict[str, float] = {}
    t2i = np.argsort(-sims, axis=1, kind="stable")
    i2t = np.argsort(-sims.T, axis=1, kind="stable")
    targets = [np.flatnonzero(owner == i) for i in range(len(image_vecs))]
    for k in ks:
        out[f"t2i_r@{k}"] = float(np.mean([hit_at_k(list(t2i[j]), [owner[j]], k) for j in range(len(owner))]))
        out[f"i2t_r@{k}"] = float(np.mean([hit_at_k(list(i2t[i]), targets[i], k) for i in range(len(image_vecs))]))
    return out


def _chance(n_images: int, caps_per_image: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    n_caps = sum(caps_per_image)
    out = {}
    for k in ks:
        out[f"t2i_r@{k}"] = min(1.0, k / n_images)
        miss = [math.comb(n_caps - c, k) / math.comb(n_caps, k) if n_caps >= k else 0.0 for c in caps_per_image]
        out[f"i2t_r@{k}"] = float(1.0 - np.mean(miss))
    return out


def evaluate_captions(
    directory: Path, captions_path: Path, config: Config, advance: Advance = no_advance, ks: Sequence[int] = (1, 5, 10)
) -> EvalResult:
    from pipelines.arguments import load_query_image
    from retriever.encoders import build_clip_encoder

    clip = build_clip_encoder(config.models)
    if clip is None:
        raise ConfigError("caption retrieval needs a CLIP model; models.clip is 'none' (set --clip-model)")
    caps = load_captions(captions_path)
    paths = {name: _find(directory, name) for name in caps}
    missing = sorted(n for n, p in paths.items() if p is None)
    found = {n: p for n, p in paths.items() if p is not None}
    names = list(found)
    if len(names) < 2:
        raise EvalDataError(f"caption retrieval needs at least 2 images; found {len(names)} of {len(caps)} under {directory}")
    t0 = time.perf_counter()
    image_vecs = []
    for start in range(0, len(names), 32):
        batch = names[start : start + 32]
        image_vecs.append(clip.encode_images([load_query_image(found[n]) for n in batch]))
        advance(len(batch))
    texts = [c for n in names for c in caps[n]]
    owner = [i for i, n in enumerate(names) for _ in caps[n]]
    text_vecs = clip.encode_texts(texts)
    metrics = caption_recalls(np.concatenate(image_vecs), text_vecs, owner, ks)
    chance = _chance(len(names), [len(caps[n]) for n in names], ks)
    rows = [[f"R@{k}", metrics[f"t2i_r@{k}"], chance[f"t2i_r@{k}"], metrics[f"i2t_r@{k}"], chance[f"i2t_r@{k}"]] for k in ks]
    table = (f"{len(names)} images, {len(texts)} captions, model {clip.model_id}\n"
             + format_table(["", "text->image", "chance", "image->text", "chance"], rows))
    return EvalResult(
        task="captions",
        dataset={"path": str(directory), "captions": str(captions_path), "images": len(names), "captions_n": len(texts),
                 "fingerprint": dataset_fingerprint([captions_path, *found.values()],
                                                    _common_root(directory, captions_path))},
        settings={"ks": list(ks)},
        models={"clip": clip.model_id},
        metrics={"model": metrics, "chance": chance},
        notes=[f"missing image: {m}" for m in missing],
        seconds={"total": time.perf_counter() - t0},
        table=table,
    )

