"""Evaluation metrics as pure functions (no models, no I/O).

Speech: ``normalize_text`` puts a reference and a hypothesis transcript in one
canonical form (lower case, no punctuation, digits spelled out, fillers and
bracketed noise tags dropped) and ``wer`` / ``corpus_wer`` compute the word error
rate on it with a plain Levenshtein alignment over words.

Retrieval: ``ndcg_at_k`` (graded gains, log2 discount, as BEIR/pytrec_eval),
``recall_at_k``, ``mrr_at_k`` and ``hit_at_k`` (image/caption Recall@K: any target
in the top K) over a ranked list of ids and a ``{id: relevance}`` judgement.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar
from dataclasses import dataclass

__all__ = [
    "EditCounts",
    "corpus_wer",
    "dedupe_ranking",
    "hit_at_k",
    "mean_retrieval_scores",
    "mrr_at_k",
    "ndcg_at_k",
    "normalize_text",
    "number_to_words",
    "recall_at_k",
    "wer",
    "word_edits",
]

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_FIX = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "vs": "versus"}
_FILLERS = frozenset({"um", "umm", "uh", "uhm", "hmm", "hm", "mm", "mmm", "mhm", "er", "erm", "ah"})

_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>|\{[^}]*\}")
_THOUSANDS_SEP = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")
_DIGITS = re.compile(r"\d+")
_APOSTROPHE = re.compile(r"['\u2018\u2019\u02bc`]")
_NON_WORD = re.compile(r"[^\w\s]|_")


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_to_words(n: int, year_style: bool = True) -> str:
    """Spell a non-negative integer: 42 -> 'forty two'; 1813 -> 'eighteen thirteen'.

    With ``year_style``, 1100..1999 (except 2000-style round thousands) are read as
    years, the way English speakers say them in prose ('in 1813').
    """
    if n < 0:
        raise ValueError(f"number_to_words needs n >= 0, got {n}")
    if year_style and 1100 <= n <= 1999:
        hi, lo = divmod(n, 100)
        tail = ["hundred"] if lo == 0 else (["oh", _ONES[lo]] if lo < 10 else _below_thousand(lo))
        return " ".join(_below_thousand(hi) + tail)
    if n < 1000:
        return " ".join(_below_thousand(n))
    words: list[str] = []
    for scale, name in _SCALES:
        if n >= scale:
            words += [number_to_words(n // scale, year_style=False), name]
            n %= scale
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def _ordinal_words(n: int) -> str:
    words = number_to_words(n, year_style=False).split()
    last = words[-1]
    if last in _ORDINAL_FIX:
        words[-1] = _ORDINAL_FIX[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _spell_digits(digits: str) -> str:
    """A run of digits as words; a leading zero ('007') is read digit by digit."""
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 15:
        return " ".join(_ONES[int(d)] for d in digits)
    return number_to_words(int(digits))


def normalize_text(text: str) -> str:
    """Canonical form for comparing transcripts.

    Lower case; bracketed tags like ``(UM)`` or ``[music]`` removed; apostrophes
    dropped (``I'm`` -> ``im``); other punctuation and hyphens become spaces;
    ``Mr.``/``Mrs.``/``Dr.`` expanded; numbers spelled out (``1,000`` -> ``one
    thousand``, ``3.5`` -> ``three point five``, ``1st`` -> ``first``, ``P2`` -> ``p
    two``, years 1100-1999 as spoken); fillers (um, uh, hmm) removed.
    """
    s = unicodedata.normalize("NFKC", text).lower()
    s = _BRACKETED.sub(" ", s)
    s = _THOUSANDS_SEP.sub("", s)
    s = s.replace("%", " percent ").replace("&", " and ")
    s = _DECIMAL.sub(lambda m: f"{m.group(1)} point {' '.join(m.group(2))}", s)
    s = _ORDINAL.sub(lambda m: " " + _ordinal_words(int(m.group(1))) + " ", s)
    s = _LETTER_DIGIT.sub(" ", s)
    s = _DIGITS.sub(lambda m: " " + _spell_digits(m.group(0)) + " ", s)
    s = _APOSTROPHE.sub("", s)
    s = _NON_WORD.sub(" ", s)
    words = [_ABBREVIATIONS.get(w, w) for w in s.split()]
    return " ".join(w for w in words if w not in _FILLERS)


@dataclass(frozen=True)
class EditCounts:
    """Word-level alignment result of a reference against a hypothesis."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_words(self) -> int:
        return self.hits + self.substitutions + self.deletions


def word_edits(reference: list[str], hypothesis: list[str]) -> EditCounts:
    """Minimum-edit alignment of two word lists (Levenshtein, unit costs)."""
    # each cell: (cost, hits, subs, dels, ins); equal costs mean equal error counts
    prev = [(j, 0, 0, 0, j) for j in range(len(hypothesis) + 1)]
    for i, ref_word in enumerate(reference, 1):
        cur = [(i, 0, 0, i, 0)]
        for j, hyp_word in enumerate(hypothesis, 1):
            diag = prev[j - 1]
            if ref_word == hyp_word:
                best = (diag[0], diag[1] + 1, diag[2], diag[3], diag[4])
            else:
                best = (diag[0] + 1, diag[1], diag[2] + 1, diag[3], diag[4])
            up, left = prev[j], cur[j - 1]
            if up[0] + 1 < best[0]:
                best = (up[0] + 1, up[1], up[2], up[3] + 1, up[4])
            if left[0] + 1 < best[0]:
                best = (left[0] + 1, left[1], left[2], left[3], left[4] + 1)
            cur.append(best)
        prev = cur
    _, hits, subs, dels, ins = prev[-1]
    return EditCounts(hits, subs, dels, ins)


def _edits(reference: str, hypothesis: str, normalize: bool) -> EditCounts:
    if normalize:
        reference, hypothesis = normalize_text(reference), normalize_text(hypothesis)
    return word_edits(reference.split(), hypothesis.split())


def wer(reference: str, hypothesis: str, normalize: bool = True) -> float:
    """Word error rate (S + D + I) / N of ``hypothesis`` against ``reference``.

    Both are passed through ``normalize_text`` first unless ``normalize`` is False.
    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
    """
    counts = _edits(reference, hypothesis, normalize)
    if counts.ref_words == 0:
        return 0.0 if counts.insertions == 0 else 1.0
    return counts.errors / counts.ref_words


def corpus_wer(pairs: Iterable[tuple[str, str]], normalize: bool = True) -> float:
    """Pooled WER over ``(reference, hypothesis)`` pairs: total errors / total reference words."""
    errors = words = 0
    for reference, hypothesis in pairs:
        counts = _edits(reference, hypothesis, normalize)
        errors += counts.errors
        words += counts.ref_words
    if words == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / words


# ---- retrieval ---------------------------------------------------------------------


K = TypeVar("K", bound=Hashable)  # a document id of any hashable type


def dedupe_ranking(ranked: Iterable[K]) -> list[K]:
    """Keep each id at its first (best) position: chunk hits -> document ranking."""
    seen: set[K] = set()
    out: list[K] = []
    for doc in ranked:
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"cut-off k must be >= 1, got {k}")


def ndcg_at_k(ranked: Sequence[K], relevant: Mapping[K, float], k: int) -> float:
    """Normalised DCG at ``k``: gain ``rel`` at 1-based rank ``i`` discounted by ``log2(i + 1)``.

    ``ranked`` should hold distinct ids (see ``dedupe_ranking``); 0.0 when nothing is relevant.
    """
    _check_k(k)
    dcg = sum(relevant.get(doc, 0.0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[K], relevant: Mapping[K, float], k: int) -> float:
    """Share of the relevant ids (relevance > 0) found in the top ``k``."""
    _check_k(k)
    wanted = {doc for doc, r in relevant.items() if r > 0}
    if not wanted:
        return 0.0
    return len(wanted.intersection(ranked[:k])) / len(wanted)


def mrr_at_k(ranked: Sequence[K], relevant: Mapping[K, float], k: int) -> float:
    """Reciprocal rank of the first relevant id within the top ``k`` (0.0 if none)."""
    _check_k(k)
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def hit_at_k(ranked: Sequence[Hashable], targets: Iterable[Hashable], k: int) -> float:
    """1.0 if any target is in the top ``k`` (the per-query term of caption Recall@K)."""
    _check_k(k)
    return 1.0 if set(targets).intersection(ranked[:k]) else 0.0


def mean_retrieval_scores(
    rankings: Mapping[str, Sequence[K]],
    qrels: Mapping[str, Mapping[K, float]],
    ndcg_k: int = 10,
    recall_k: int = 100,
    mrr_k: int = 10,
) -> dict[str, float]:
    """Mean nDCG/Recall/MRR over the judged queries (a query with no ranking scores 0)."""
    judged = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    if not judged:
        raise ValueError("no query has a relevant document in the judgements")
    totals = {f"ndcg@{ndcg_k}": 0.0, f"recall@{recall_k}": 0.0, f"mrr@{mrr_k}": 0.0}
    for q in judged:
        ranked, rels = list(rankings.get(q, ())), qrels[q]
        totals[f"ndcg@{ndcg_k}"] += ndcg_at_k(ranked, rels, ndcg_k)
        totals[f"recall@{recall_k}"] += recall_at_k(ranked, rels, recall_k)
        totals[f"mrr@{mrr_k}"] += mrr_at_k(ranked, rels, mrr_k)
    return {name: value / len(judged) for name, value in totals.items()}
