"""``mmrag eval answers``: do answers cite the evidence they should, and are citations valid?

The questions file is JSON (a list, or ``{"corpus": [...], "questions": [...]}``) or
JSON Lines, one question per entry::

    {"id": "q1", "question": "Which program did lawyers prefer?",
     "expected": [{"source": "word_processors.md", "contains": "WordPerfect"},
                  {"source": "report.pdf", "page": 3},
                  {"source": "talk.mp4", "t_start": 80.0, "t_end": 101.5}]}

An expected locator matches a cited item when the source matches (file name,
display path, path suffix or glob) and every other given field agrees: ``page``
(or ``pages``), a time span overlapping ``t_start``..``t_end`` (``tolerance_s``
widens it), ``contains`` (a substring of the item's text, case-insensitive).

Metrics: ``evidence_hit`` share of questions whose answer cites an expected item;
``retrieved_hit`` share whose evidence pack holds one (the ceiling retrieval sets);
``citation_validity`` share of all ``[n]`` markers the model wrote that point at retrieved
evidence and resolve to a stored item of that source (the checker drops the others); ``answered``
share not answered "not found"; ``unsupported_sentences`` per answer.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.engine import Engine
from pipelines.eval.results import (
    Advance,
    EvalDataError,
    EvalResult,
    dataset_fingerprint,
    format_table,
    no_advance,
)
from pipelines.rag.evidence import Answer
from retriever.types import Hit, Locator

__all__ = ["AnswerCase", "evaluate_answers", "load_answer_cases", "locator_matches"]

_FIELDS = {"source", "page", "pages", "t_start", "t_end", "tolerance_s", "contains"}


@dataclass(frozen=True)
class AnswerCase:
    id: str
    question: str
    expected: tuple[Mapping[str, Any], ...]


def _check_expected(where: str, exp: Any) -> Mapping[str, Any]:
    if not isinstance(exp, Mapping) or not isinstance(exp.get("source"), str) or not exp["source"].strip():
        raise EvalDataError(f"{where}: each expected locator needs a 'source' string, got {exp!r}")
    unknown = set(exp) - _FIELDS
    if unknown:
        raise EvalDataError(f"{where}: unknown locator field(s) {sorted(unknown)}; expected some of {sorted(_FIELDS)}")
    if ("t_start" in exp) != ("t_end" in exp):
        raise EvalDataError(f"{where}: a time span needs both 't_start' and 't_end'")
    return dict(exp)


def load_answer_cases(path: Path) -> tuple[list[AnswerCase], list[Path]]:
    """The questions and the corpus paths (resolved against the file's folder) it names."""
    if not path.is_file():
        raise EvalDataError(f"questions file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data: Any = json.loads(text)
    except ValueError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise EvalDataError(f"{path} is neither JSON nor JSON Lines: {exc}") from None
    corpus: list[Path] = []
    if isinstance(data, Mapping):
        corpus = [(path.parent / p).resolve() for p in data.get("corpus", [])]
        data = data.get("questions")
    if not isinstance(data, list) or not data:
        raise EvalDataError(f"{path}: expected a non-empty list of questions")
    cases = []
    for n, row in enumerate(data, 1):
        where = f"{path.name} question {n}"
        if not isinstance(row, Mapping) or not isinstance(row.get("question"), str) or not row["question"].strip():
            raise EvalDataError(f"{where}: needs a non-empty 'question' string")
        expected = row.get("expected")
        if not isinstance(expected, list) or not expected:
            raise EvalDataError(f"{where}: needs a non-empty 'expected' list of evidence locators")
        cases.append(AnswerCase(str(row.get("id", n)), row["question"].strip(),
                                tuple(_check_expected(where, e) for e in expected)))
    return cases, corpus


def _source_matches(pattern: str, uri: str, display: str) -> bool:
    name = Path(uri).name
    return (
        pattern in (name, display, uri)
        or uri.endswith("/" + pattern.lstrip("/"))
        or any(fnmatch.fnmatch(x, pattern) for x in (name, display, uri))
    )


def locator_matches(expected: Mapping[str, Any], hit: Hit) -> bool:
    """Whether the item ``hit`` is the evidence ``expected`` describes."""
    loc: Locator = hit.locator
    if not _source_matches(expected["source"], hit.source_uri, hit.source_name):
        return False
    pages = expected.get("pages") or ([expected["page"]] if "page" in expected else None)
    if pages is not None and loc.page not in {int(p) for p in pages}:
        return False
    if "t_start" in expected:
        tol = float(expected.get("tolerance_s", 0.0))
        start = loc.t_start if loc.t_start is not None else loc.t
        end = loc.t_end if loc.t_end is not None else loc.t
        if start is None or end is None:
            return False
        if start > float(expected["t_end"]) + tol or end < float(expected["t_start"]) - tol:
            return False
    return "contains" not in expected or str(expected["contains"]).lower() in (hit.text or "").lower()


def _score_case(case: AnswerCase, answer: Answer, engine: Engine) -> dict[str, Any]:
    by_n = {ev.n: ev.hit for ev in answer.evidence}
    cited = [by_n[c.n] for c in answer.citations if c.n in by_n]
    retrieved = [ev.hit for ev in answer.evidence]
    stored = engine.items(h.item_id for h in cited)
    resolved = [h for h in cited if h.item_id in stored and stored[h.item_id].source_uri == h.source_uri]
    return {
        "id": case.id,
        "question": case.question,
        "answered": bool(answer.found),
        "evidence_hit": any(locator_matches(e, h) for e in case.expected for h in cited),
        "retrieved_hit": any(locator_matches(e, h) for e in case.expected for h in retrieved),
        "citations": len(answer.citations),
        "resolved_citations": len(resolved),
        "invalid_citations": len(answer.invalid_citations),
        "unsupported": len(answer.unsupported),
        "cited": [h.citation for h in cited],
        "answer": answer.text,
    }


def evaluate_answers(
    engine: Engine, cases: Sequence[AnswerCase], questions_path: Path, *, k: int = 8,
    advance: Advance = no_advance,
) -> EvalResult:
    """Ask every question through ``engine.ask`` and score the citations."""
    t0 = time.perf_counter()
    rows = []
    for case in cases:
        rows.append(_score_case(case, engine.ask(case.question, k=k), engine))
        advance(1)
    n = len(rows)
    written = sum(r["citations"] + r["invalid_citations"] for r in rows)
    metrics = {
        "evidence_hit": sum(r["evidence_hit"] for r in rows) / n,
        "retrieved_hit": sum(r["retrieved_hit"] for r in rows) / n,
        "answered": sum(r["answered"] for r in rows) / n,
        "citation_validity": (sum(r["resolved_citations"] for r in rows) / written) if written else 1.0,
        "unsupported_sentences": sum(r["unsupported"] for r in rows) / n,
    }
    table = format_table(
        ["id", "answered", "cites expected", "retrieved expected", "citations", "invalid"],
        [[r["id"], "yes" if r["answered"] else "no", "yes" if r["evidence_hit"] else "no",
          "yes" if r["retrieved_hit"] else "no", r["citations"], r["invalid_citations"]] for r in rows],
    )
    table += "\n" + "  ".join(f"{name} {value:.3f}" for name, value in metrics.items())
    llm = engine.config.llm
    return EvalResult(
        task="answers",
        dataset={"path": str(questions_path), "questions": n,
                 "fingerprint": dataset_fingerprint([questions_path], questions_path.parent)},
        settings={"k": k, "llm": {"spec": llm.spec, "min_text_relevance": llm.min_text_relevance,
                                  "max_images": llm.max_images, "temperature": llm.temperature}},
        models={**engine.space_models(), "llm": llm.spec},
        metrics=metrics,
        rows=rows,
        seconds={"total": time.perf_counter() - t0},
        table=table,
    )
