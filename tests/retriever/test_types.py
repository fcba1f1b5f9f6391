"""Named tags keep their stored strings, and the one rule for which spaces an item belongs in."""

from __future__ import annotations

import json

import pytest

from retriever.maintenance.report import Problem, Severity
from retriever.types import (
    ALL_SPACES,
    CLIP_SPACES,
    ItemKind,
    RunName,
    RunStatus,
    SourceStatus,
    Space,
    spaces_for,
    store_spaces,
)


@pytest.mark.parametrize("enum, values", [
    (Space, ["clip", "clip_texts", "text", "bm25"]),
    (RunName, ["clip_text", "clip_image", "text", "bm25"]),
    (ItemKind, ["chunk", "photo", "page", "figure", "window", "keyframe"]),
    (SourceStatus, ["ok", "failed"]),
    (RunStatus, ["running", "ok", "interrupted", "failed"]),
    (Severity, ["error", "warning"]),
])
def test_enum_values_are_the_stored_strings(enum, values: list[str]) -> None:
    assert [m.value for m in enum] == values
    for member, value in zip(enum, values):
        assert member == value and str(member) == value and f"{member}" == value and hash(member) == hash(value)
        assert json.dumps({member: member}) == json.dumps({value: value})
        assert enum(value) is member


def test_space_groups() -> None:
    assert CLIP_SPACES == ("clip", "clip_texts") and ALL_SPACES == ("clip", "clip_texts", "text", "bm25")


def test_problems_serialise_with_plain_strings() -> None:
    data = Problem("index_stale", Severity.WARNING, "lags", space=Space.BM25).to_dict()
    assert json.loads(json.dumps(data)) == {"code": "index_stale", "severity": "warning", "message": "lags",
                                            "count": 1, "space": "bm25"}
    assert type(data["severity"]) is str and type(data["space"]) is str


ALL_DENSE = {"clip", "clip_texts", "text"}


@pytest.mark.parametrize("has_text, visual, available, expected", [
    (True, False, ALL_DENSE, {"text", "clip_texts"}),  # a text chunk
    (False, True, ALL_DENSE, {"clip"}),  # a photo
    (True, True, ALL_DENSE, {"clip", "text"}),  # a keyframe with speech, a scanned page
    (False, False, ALL_DENSE, set()),
    (True, False, {"clip", "text"}, {"text"}),  # models.clip_texts = false
    (True, True, {"text"}, {"text"}),  # no CLIP model
    (False, True, {"text"}, set()),
])
def test_spaces_for(has_text: bool, visual: bool, available: set[str], expected: set[str]) -> None:
    got = spaces_for(has_text=has_text, visual=visual, available=available)
    assert got == expected and all(isinstance(s, Space) for s in got)


def test_store_spaces() -> None:
    assert store_spaces(clip=True, clip_texts=True) == (Space.CLIP, Space.CLIP_TEXTS, Space.TEXT)
    assert store_spaces(clip=True, clip_texts=False) == (Space.CLIP, Space.TEXT)
    assert store_spaces(clip=False, clip_texts=True) == (Space.TEXT,)
