"""Citations in an answer: check them against the evidence given, then number them for reading.

:func:`check_citations` keeps only ``[n]`` that name evidence the model was given and
flags sentences that state something without a citation. :func:`renumber_citations`
rewrites the numbers of a checked answer, so that a reader sees ``[1]``, ``[2]``, ...
in the order the answer first cites them, with no gaps for evidence it did not use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipelines.rag import prompts
from pipelines.rag.extractive import split_sentences

__all__ = ["CitationCheck", "check_citations", "citation_order", "is_not_found", "renumber_citations"]

_GROUP = re.compile(r"[ \t]*\[([^\[\]\n]{1,120})\]")
_PREFIX = re.compile(r"^\s*(?:evidence|sources?|refs?|doc(?:ument)?s?)\s*#?\s*", re.IGNORECASE)
_CITATION_LIKE = re.compile(r"^[-–—]?\d[\w\s,;.\-–—]*$")
_DASH = re.compile(r"\s*[-–—]\s*")
_NUMBER = re.compile(r"^[0-9]+$")
_RANGE = re.compile(r"^([0-9]+)-([0-9]+)$")
_INT = re.compile(r"(?<![0-9])-?[0-9]+")
_LEADING_GROUPS = re.compile(r"^(?:\[[^\[\]\n]*\]\s*)+")


@dataclass(frozen=True)
class CitationCheck:
    """``text`` with invalid citations removed; ``cited``: valid numbers in order of first use."""

    text: str
    cited: list[int]
    invalid: list[int]
    unsupported: list[str]


def check_citations(text: str, n_evidence: int) -> CitationCheck:
    """Keep only citations of evidence ``1..n_evidence``; flag uncited sentences.

    A bracket group is a citation when its content (after an optional
    ``evidence``/``source`` word) starts with a digit: ``[1]``, ``[1,2]``,
    ``[1; 3]``, ``[1-3]``, ``[Evidence 2]``. Each comma/space separated part must be
    a number ``1 <= k <= n`` or an ascending range of them; any other part (``0``,
    out of range numbers, reversed or out of range ranges, ``1.5``, ``2a``) is removed
    and every integer in it is reported as invalid. ``[sic]`` and other prose
    brackets are left alone.
    """
    cited: list[int] = []
    invalid: list[int] = []

    def fix(match: re.Match[str]) -> str:
        body = _PREFIX.sub("", match.group(1), count=1)
        if not _is_citation(body):
            return match.group(0)
        normal = _DASH.sub("-", body.strip())
        parts = [p for p in re.split(r"[,;\s]+", normal) if p]
        kept = []
        for part in parts:
            numbers = _parse_part(part, n_evidence)
            if numbers is None:
                invalid.extend(int(v) for v in _INT.findall(part))
                continue
            kept.append(part)
            cited.extend(numbers)
        if not kept:
            return ""
        lead = _lead(match)
        if len(kept) == len(parts) and body == match.group(1) and normal == body.strip():
            return match.group(0)
        return f"{lead}[{', '.join(kept)}]"

    cleaned = _GROUP.sub(fix, text)
    cleaned = re.sub(r"\]\s*[,;](?=\s*(?:[.!?]|$))", "]", cleaned, flags=re.MULTILINE)
    return CitationCheck(
        text=cleaned.strip(),
        cited=_dedupe(cited),
        invalid=_dedupe(invalid),
        unsupported=_unsupported(cleaned),
    )


def citation_order(cited: Sequence[int], n_evidence: int) -> dict[int, int]:
    """Old number -> new number: cited evidence first, in order of first citation, then the rest."""
    order = _dedupe([n for n in cited if 1 <= n <= n_evidence])
    order += [n for n in range(1, n_evidence + 1) if n not in order]
    return {old: new for new, old in enumerate(order, start=1)}


def renumber_citations(text: str, mapping: Mapping[int, int]) -> str:
    """Rewrite the citations of a *checked* text with ``mapping`` (old number -> new number).

    A group whose numbers all keep their number is left exactly as written; any other
    group becomes ``[a, b]`` with its new numbers in ascending order (three or more
    consecutive numbers as a range ``[a-c]``).
    """

    def rewrite(match: re.Match[str]) -> str:
        body = _PREFIX.sub("", match.group(1), count=1)
        if not _is_citation(body):
            return match.group(0)
        old = [n for part in re.split(r"[,;\s]+", _DASH.sub("-", body.strip())) if part
               for n in (_parse_part(part, max(mapping, default=0)) or [])]
        new = sorted({mapping.get(n, n) for n in old})
        if not old or all(mapping.get(n, n) == n for n in old):
            return match.group(0)
        return f"{_lead(match)}[{_compact(new)}]"

    return _GROUP.sub(rewrite, text)


def _compact(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3, 5"``: runs of three or more as ranges."""
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        run = range(start, prev + 1)
        parts.append(f"{start}-{prev}" if len(run) >= 3 else ", ".join(str(k) for k in run))
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _lead(match: re.Match[str]) -> str:
    whole = match.group(0)
    return whole[: len(whole) - len(whole.lstrip(" \t"))]


def _is_citation(body: str) -> bool:
    return bool(_CITATION_LIKE.match(body.strip()))


def _has_citation(sentence: str) -> bool:
    return any(_is_citation(_PREFIX.sub("", m.group(1), count=1)) for m in _GROUP.finditer(sentence))


def _parse_part(part: str, n: int) -> list[int] | None:
    """The evidence numbers a citation part names, or None when it is invalid."""
    if _NUMBER.match(part):
        k = int(part)
        return [k] if 1 <= k <= n else None
    m = _RANGE.match(part)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return list(range(a, b + 1)) if 1 <= a <= b <= n else None
    return None


def _dedupe(values: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(values))


def _unsupported(text: str) -> list[str]:
    """Sentences that state something but carry no citation."""
    out = []
    for sentence in _attach_leading_citations(split_sentences(text, keep_lines=True)):
        if _has_citation(sentence):
            continue
        bare = sentence.strip()
        if not re.search(r"[^\W_]", bare) or bare.endswith(":") or bare.startswith("#"):
            continue
        if is_not_found(bare):
            continue
        out.append(sentence.strip())
    return out


def _attach_leading_citations(sentences: list[str]) -> list[str]:
    """Move citations that open a sentence (``text. [1] Next``) to the sentence before."""
    out: list[str] = []
    for sentence in sentences:
        lead = _LEADING_GROUPS.match(sentence)
        if lead and out:
            out[-1] = f"{out[-1]} {lead.group(0).strip()}"
            sentence = sentence[lead.end() :]
        if sentence.strip():
            out.append(sentence)
    return out


def is_not_found(text: str) -> bool:
    """Whether ``text`` is (or starts with) the explicit "not found" answer."""
    norm = re.sub(r"[^a-z ]", "", text.lower()).strip()
    return norm.startswith(re.sub(r"[^a-z ]", "", prompts.NOT_FOUND_TEXT.lower()).strip())
