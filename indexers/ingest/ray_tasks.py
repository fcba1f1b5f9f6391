"""What the Ray executor runs on the cluster: the decode task of a file and the encoder actors.

Nothing here imports Ray: these are plain functions and classes that Ray Data ships to its
workers (``indexers.ingest.ray_executor`` builds the dataset). Rows between the stages have
the same columns whatever they carry, all of them plain Arrow types, so Ray Data keeps them in
Arrow blocks (no Python objects in the rows):

* ``key`` (int): the file's number in the run; ``tag`` (str): ``item``, ``done`` or ``fail``;
* ``meta`` (str): JSON: an item's place in its file and its fields (modality, kind, locator,
  text, metadata, the shape and dtype of its CLIP input), or a file's end (content type, family, metadata, notes, item
  count), or its failure reason;
* ``pixels`` (bytes): an item's CLIP input tensor (raw, C order), ``thumb`` and ``preview``
  (bytes): its JPEG renditions; empty when it has none;
* after the encoder: ``vectors`` (bytes: float32 rows, one per space, concatenated) and
  ``spaces`` (str: JSON ``[[space, dim], ...]``); ``pixels`` is emptied.

The models are built in the worker processes from the model settings of the store (never
shipped from the driver) and kept per process: in a decode task the CLIP model (its image
preprocessing, and keyframe de-duplication of videos) and the speech model, both on the CPU;
in an encoder actor CLIP and the text model, on its GPU when it has one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexers.ingest.discover import OUTSIDE, is_inside
from indexers.ingest.encode import encode_items
from indexers.ingest.prepare import PreparedItem
from indexers.ingest.workers import decode_file, failure_reason
from indexers.registry import Registry
from retriever.catalog import NewItem, SourceInfo
from retriever.config import Config, ModelsConfig
from retriever.encoders import build_clip_encoder, build_text_encoder
from retriever.encoders.base import ImageTextEncoder
from retriever.errors import IngestError
from retriever.types import Locator, Modality

__all__ = ["COLUMNS", "EncodeRows", "bundle_row", "decode_rows", "file_row", "item_from_row",
           "row_vectors"]

COLUMNS = ("key", "tag", "meta", "pixels", "thumb", "preview")
_DECODE_MODELS: dict[ModelsConfig, ImageTextEncoder | None] = {}
_DECODE_LOCK = threading.Lock()


def file_row(path: Path, info: SourceInfo) -> dict[str, Any]:
    """What a decode task needs of one file (JSON keeps any file name intact)."""
    return {"path": str(path), "uri": info.uri, "display": info.display, "hash": info.content_hash,
            "size": info.size, "mtime": info.mtime}


def bundle_row(files: Sequence[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The input row of one decode task: a few small files, or one big one (``(key, file_row)`` pairs)."""
    return {"files": json.dumps([[key, data] for key, data in files])}


def decode_rows(
    row: Mapping[str, Any], *, registry: Registry, config: Config, within: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map`` over a bundle of files: for each file one row per prepared item, then its
    ``done`` row, or a ``fail`` row with the reason once anything went wrong (its items are then
    dropped). ``within``: the run's allowed directories, checked again here, where the file is read."""
    config = decode_config(config)
    clip = _decode_clip(config.models)
    confine = None if within is None else tuple(within)
    for key, data in json.loads(row["files"]):
        yield from _decode_one(int(key), data, registry, config, clip, confine)


def _decode_one(
    key: int, data: Mapping[str, Any], registry: Registry, config: Config, clip: ImageTextEncoder | None,
    within: tuple[str, ...] | None,
) -> Iterator[dict[str, Any]]:
    path = Path(data["path"])
    info = SourceInfo(data["uri"], data["display"], data["hash"], data["size"], data["mtime"])
    end: dict[str, Any] = {}
    try:
        if within is not None and not is_inside(path, within):
            raise IngestError(OUTSIDE)
        _check_unchanged(path, info)
        info, ctx, items = decode_file(path, info, registry, clip, config, None)
        end = {"content_type": info.content_type, "family": info.family}
        count = 0
        for item in items:
            yield _item_row(key, item, count)
            count += 1
        end.update(metadata=dict(ctx.source_metadata), notes=list(ctx.notes), items=count)
        yield _row(key, "done", end)
    except Exception as exc:  # one bad file never stops a run (MemoryError included)
        yield _row(key, "fail", {**end, "reason": failure_reason(exc)})


def decode_config(config: Config) -> Config:
    """The config of a decode task: models on the CPU (the GPUs are the encoder actors')."""
    precision = "auto" if config.models.precision == "fp16" else config.models.precision
    return config.with_overrides({"models.device": "cpu", "models.precision": precision})


def _decode_clip(models: ModelsConfig) -> ImageTextEncoder | None:
    """The CLIP model of this worker process for ``models`` (built once, loaded on first use)."""
    with _DECODE_LOCK:
        if models not in _DECODE_MODELS:
            _DECODE_MODELS[models] = build_clip_encoder(models)
        return _DECODE_MODELS[models]


def _check_unchanged(path: Path, info: SourceInfo) -> None:
    """The file is still the one the driver hashed (same size and mtime), else ``IngestError``."""
    try:
        st = path.stat()
    except OSError as exc:
        raise IngestError(f"cannot read file on this node: {exc.strerror or exc}") from exc
    if st.st_size != info.size or st.st_mtime != info.mtime:
        raise IngestError("the file changed while it was being ingested; ingest it again")


def _row(key: int, tag: str, meta: Mapping[str, Any], pixels: bytes = b"", thumb: bytes | None = None,
         preview: bytes | None = None) -> dict[str, Any]:
    return {"key": key, "tag": tag, "meta": json.dumps(meta), "pixels": pixels, "thumb": thumb or b"",
            "preview": preview or b""}


def _item_row(key: int, item: PreparedItem, place: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"place": place, "modality": item.modality.value, "kind": item.kind,
                            "locator": item.locator.to_dict(), "text": item.text, "metadata": dict(item.metadata)}
    pixels = b""
    if item.clip_input is not None:
        arr = np.ascontiguousarray(_to_numpy(item.clip_input))
        meta.update(shape=list(arr.shape), dtype=arr.dtype.str, torch=not isinstance(item.clip_input, np.ndarray))
        pixels = arr.tobytes()
    return _row(key, "item", meta, pixels, item.thumbnail, item.preview)


def _to_numpy(value: Any) -> np.ndarray:
    detach = getattr(value, "detach", None)
    return np.asarray(detach().cpu().numpy() if detach is not None else value)


def _prepared(meta: Mapping[str, Any], pixels: bytes) -> PreparedItem:
    """The item as the encoders take it (its JPEGs stay in the row)."""
    clip_input: Any = None
    if meta.get("shape") is not None:
        clip_input = np.frombuffer(pixels, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])
        if meta.get("torch"):
            import torch

            clip_input = torch.from_numpy(clip_input.copy())
    return PreparedItem(Modality(meta["modality"]), meta["kind"], Locator.from_dict(meta["locator"]), meta["text"],
                        meta["metadata"], clip_input, None, None)


class EncodeRows:
    """Ray Data ``map_batches`` actor: the vectors of a batch's item rows (other rows pass through).

    The models load when the actor starts, while the first files are being decoded.
    """

    def __init__(self, models: ModelsConfig) -> None:
        self.clip = build_clip_encoder(models)
        self.text = build_text_encoder(models)
        self.clip_texts = models.clip_texts
        self.text.encode_texts(["load the weights"])
        if self.clip is not None:
            self.clip.encode_texts(["load the weights"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        at = [i for i in range(n) if batch["tag"][i] == "item"]
        items = [_prepared(json.loads(batch["meta"][i]), batch["pixels"][i]) for i in at]
        vectors = encode_items(items, self.clip, self.text, self.clip_texts) if items else []
        blobs = np.full(n, b"", dtype=object)
        spaces = np.full(n, "[]", dtype=object)
        for i, vecs in zip(at, vectors):
            blobs[i] = b"".join(np.asarray(v, dtype=np.float32).tobytes() for v in vecs.values())
            spaces[i] = json.dumps([[name, int(np.asarray(v).size)] for name, v in vecs.items()])
        out = {name: batch[name] for name in COLUMNS if name != "pixels"}
        return {**out, "pixels": np.full(n, b"", dtype=object), "vectors": blobs, "spaces": spaces}


def row_vectors(blob: bytes, spaces: str) -> dict[str, np.ndarray]:
    """An encoded row's vectors per space."""
    flat = np.frombuffer(blob, dtype=np.float32)
    out, at = {}, 0
    for name, dim in json.loads(spaces):
        out[name] = flat[at : at + dim].copy()
        at += dim
    return out


def item_from_row(meta: Mapping[str, Any], blob: bytes, spaces: str) -> NewItem:
    """The catalog's item of an encoded row."""
    return NewItem(meta["modality"], meta["kind"], meta["locator"], meta["text"], meta["metadata"],
                   row_vectors(blob, spaces))
