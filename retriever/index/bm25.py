"""BM25 over every item that carries text (bm25s, with English stemming when available).

bm25s builds a static index, so the lexical space is rebuilt from the catalog
when the catalog has changed since the saved copy (the rebuild streams texts and
is fast: tokenising is the bulk of it). Saved as ``bm25-<seq>/`` plus a pointer
``bm25.json`` written last, like the vector indexes; no pickle anywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from retriever.errors import StoreError
from retriever.index.atomic import atomic_write_bytes, load_pointer, pointer_path

__all__ = ["Bm25Index", "tokenize"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# A compact English stop list: function words that carry no topic.
_STOP = frozenset(
    """a an and are as at be but by for from has have he her his i if in into is it its itself me my no not of on
    or our she so such than that the their them then there these they this those to was we were what when where
    which who whom why will with you your yours do does did done can could would should may might must shall
    been being am about above after again against all any because before below between both during each few
    further here how more most other own same some too very just only over under until up down out off once""".split()
)


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    try:
        import Stemmer  # PyStemmer (Snowball); optional

        return Stemmer.Stemmer("english")
    except ImportError:  # pragma: no cover - PyStemmer is a declared dependency
        return None


def tokenize(text: str) -> list[str]:
    """NFKC-folded, lower-cased word tokens without stop words, Snowball-stemmed when available."""
    words = [w for w in _WORD.findall(unicodedata.normalize("NFKC", text).lower()) if w not in _STOP]
    stem = _stemmer()
    return stem.stemWords(words) if stem is not None and words else words


class Bm25Index:
    """A BM25 index addressed by item id."""

    def __init__(self) -> None:
        self._bm25: Any = None  # a bm25s.BM25 once built (None: no item has text)
        self._ids = np.zeros(0, dtype=np.int64)
        self._vocab: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(len(self._ids))

    def ids(self) -> np.ndarray:
        """The ids of the indexed items, in index order."""
        with self._lock:
            return self._ids.copy()

    def build(self, docs: Iterable[tuple[int, str]]) -> None:
        import bm25s

        ids: list[int] = []
        tokens: list[list[str]] = []
        for item_id, text in docs:
            ids.append(int(item_id))
            tokens.append(tokenize(text))
        bm25 = None
        if ids:
            bm25 = bm25s.BM25()
            bm25.index(tokens, show_progress=False)
        with self._lock:
            self._bm25, self._ids = bm25, np.asarray(ids, dtype=np.int64)
            self._vocab = frozenset(bm25.vocab_dict) if bm25 is not None else frozenset()

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, item ids) best first; empty when no query term is in the corpus."""
        with self._lock:
            bm25, ids, vocab = self._bm25, self._ids, self._vocab
        terms = [t for t in tokenize(query) if t in vocab]
        if bm25 is None or not terms or k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = bm25.get_scores(terms)
        # Top k among the documents that contain a query term. bm25s' own retrieve() runs
        # argpartition over every document, and most score exactly 0: on 100k items that
        # took 9 ms of the 10 ms a query cost (bench/query.py); the non-zero ones are few.
        docs = np.flatnonzero(scores > 0)
        if len(docs) > k:  # keep every document tied with the k-th, so the cut below is by id
            kth = np.partition(scores[docs], len(docs) - k)[len(docs) - k]
            docs = docs[scores[docs] >= kth]
        docs = docs[np.lexsort((ids[docs], -scores[docs]))][:k]  # best first, ties by item id
        return scores[docs].astype(np.float32), ids[docs]

    def idf(self, terms: Iterable[str]) -> dict[str, float]:
        """BM25 (Lucene) idf of each term (a token as ``tokenize`` makes it) over the indexed items.

        ``ln(1 + (N - df + 0.5) / (df + 0.5))``: terms that many items contain weigh little, and a
        term no item contains weighs most.
        """
        with self._lock:
            bm25, n = self._bm25, len(self._ids)
        out: dict[str, float] = {}
        for term in terms:
            df = 0
            if bm25 is not None and term in bm25.vocab_dict:
                j = bm25.vocab_dict[term]
                df = int(bm25.scores["indptr"][j + 1] - bm25.scores["indptr"][j])
            out[term] = float(np.log1p((n - df + 0.5) / (df + 0.5)))
        return out

    def save(self, directory: Path, name: str, seq: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        sub = f"{name}-{int(seq)}"
        target = directory / sub
        tmp = directory / f".{sub}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with self._lock:
            bm25, ids = self._bm25, self._ids
        if bm25 is not None:
            bm25.save(str(tmp), show_progress=False)
        atomic_write_bytes(tmp / "ids.bin", ids.astype("<i8").tobytes())
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        meta = {"seq": int(seq), "dir": sub, "count": int(len(ids)), "empty": bm25 is None}
        atomic_write_bytes(pointer_path(directory, name), json.dumps(meta).encode())
        for old in directory.glob(f"{name}-*"):
            if old.name != sub and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path, name: str) -> tuple[Bm25Index, int] | None:
        """The saved index and the seq it covers; None when none was saved, StoreError when unreadable."""
        import bm25s

        meta = load_pointer(directory, name)
        if meta is None:
            return None
        path = directory / str(meta.get("dir"))
        index = cls()
        try:
            index._ids = np.fromfile(path / "ids.bin", dtype="<i8").astype(np.int64)
            if not meta.get("empty"):
                index._bm25 = bm25s.BM25.load(str(path), show_progress=False, verbosity=0)
                index._vocab = frozenset(index._bm25.vocab_dict)
            seq = int(meta["seq"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"saved BM25 index {path} is unreadable ({type(exc).__name__}: {exc}); run `mmrag repair`"
                             ) from exc
        return index, seq
