"""What ``verify`` finds: problems with a stable code and a severity, gathered in a report.

Severity: an ``error`` means the store is inconsistent (a reader could miss or mis-rank
items); a ``warning`` is something to tidy up or to re-ingest (a stale cache, an orphan
file, a source file changed since it was ingested).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ERROR", "WARNING", "Problem", "Severity", "VerifyReport", "ids_problem"]

_SHOW_IDS = 20  # ids listed per problem (the count is always exact)


class Severity(enum.StrEnum):
    """How bad a problem is (the plain strings appear in ``verify --json``)."""

    ERROR = "error"
    WARNING = "warning"


ERROR, WARNING = Severity.ERROR, Severity.WARNING


@dataclass(frozen=True)
class Problem:
    """One finding: a stable ``code``, its severity and a message a person can act on."""

    code: str
    severity: Severity
    message: str
    space: str | None = None
    item_ids: tuple[int, ...] = ()
    count: int = 1
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "severity": str(self.severity), "message": self.message,
                               "count": self.count}
        if self.space:
            out["space"] = str(self.space)
        if self.item_ids:
            out["item_ids"] = list(self.item_ids)
        if self.path:
            out["path"] = self.path
        return out


@dataclass(frozen=True)
class VerifyReport:
    """Every problem found in one store, with the counts ``verify`` saw."""

    store: str
    problems: tuple[Problem, ...]
    counts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not any(p.severity == ERROR for p in self.problems)

    @property
    def clean(self) -> bool:
        return not self.problems

    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def of(self, code: str) -> list[Problem]:
        return [p for p in self.problems if p.code == code]

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "clean": self.clean,
            "errors": sum(p.severity == ERROR for p in self.problems),
            "warnings": sum(p.severity == WARNING for p in self.problems),
            "counts": dict(self.counts),
            "problems": [p.to_dict() for p in self.problems],
        }


def ids_problem(code: str, severity: Severity, message: str, ids: Iterable[Any], space: str | None = None) -> Problem:
    """A problem about some item ids: ``{n}`` in ``message`` becomes their count; the first few are listed."""
    found = sorted(int(i) for i in ids)
    return Problem(code, severity, message.format(n=len(found)), space, tuple(found[:_SHOW_IDS]), len(found))
