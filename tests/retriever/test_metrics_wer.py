"""Normalised word error rate: the normaliser's rules and the alignment's counts."""

from __future__ import annotations

import json
import random

import pytest

from retriever.config import eval_data_dir
from retriever.metrics import EditCounts, corpus_wer, normalize_text, number_to_words, wer, word_edits


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("And so, my fellow Americans: ask not!", "and so my fellow americans ask not"),
        ("I'M ABIGAIL (UM) CLAFLIN", "im abigail claflin"),
        ("It’s [Music] fine", "its fine"),
        ("Mr. Quilter and Mrs. Dr. Who", "mister quilter and missus doctor who"),
        ("In 1813", "in eighteen thirteen"),
        ("in 1905 and 1900", "in nineteen oh five and nineteen hundred"),
        ("8. The Press Yard.", "eight the press yard"),
        ("Set white with P2 soon.", "set white with p two soon"),
        ("1,000 people, 3.5% of them", "one thousand people three point five percent of them"),
        ("the 21st and 2nd", "the twenty first and second"),
        ("agent 007", "agent zero zero seven"),
        ("uh, well, um, hmm mm-hmm yes", "well yes"),
        ("there-under", "there under"),
        ("", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (101, "one hundred one"),
        (999, "nine hundred ninety nine"),
        (1000, "one thousand"),
        (1813, "eighteen thirteen"),
        (2024, "two thousand twenty four"),
        (1_000_001, "one million one"),
    ],
)
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_number_to_words_rejects_negative() -> None:
    with pytest.raises(ValueError):
        number_to_words(-1)


def test_reference_forms_in_shared_transcripts_agree() -> None:
    """The raw and normalised references of the LJSpeech clips normalise to the same words."""
    path = eval_data_dir() / "audio" / "transcripts.json"
    if not path.is_file():
        pytest.skip(f"evaluation data not found at {path}")
    refs = json.loads(path.read_text())
    both = {k: v for k, v in refs.items() if v.get("text_normalized")}
    assert both, "expected clips with both raw and normalised references"
    for name, ref in both.items():
        assert normalize_text(ref["text"]) == normalize_text(ref["text_normalized"]), name


def test_word_edits_counts() -> None:
    counts = word_edits(["a", "b", "c", "d"], ["a", "x", "c", "d", "e"])
    assert counts == EditCounts(hits=3, substitutions=1, deletions=0, insertions=1)
    assert counts.errors == 2 and counts.ref_words == 4
    assert word_edits(["a", "b", "c"], []).deletions == 3
    assert word_edits([], ["a", "b"]).insertions == 2


def test_wer_values() -> None:
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer("the cat sat", "The cat, sat!") == 0.0  # normalisation
    assert wer("the cat sat", "the cat, sat", normalize=False) == pytest.approx(1 / 3)
    assert wer("the cat sat on the mat", "the cat sat on mat") == pytest.approx(1 / 6)
    assert wer("a b", "a b c d e f") == pytest.approx(2.0)  # insertions can push WER over 1
    assert wer("", "") == 0.0 and wer("", "noise") == 1.0
    assert wer("IN EIGHTEEN THIRTEEN", "in 1813.") == 0.0


def test_corpus_wer_pools_words() -> None:
    pairs = [("a b c d e f g h i j", "a b c d e f g h i j"), ("x", "y")]
    assert corpus_wer(pairs) == pytest.approx(1 / 11)  # pooled, not the mean of 0.0 and 1.0
    assert corpus_wer([]) == 0.0


def test_wer_matches_jiwer_on_random_sentences() -> None:
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(7)
    vocab = ["a", "b", "c", "d", "e", "f", "g"]
    for _ in range(300):
        ref = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12)))
        hyp = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))
        assert wer(ref, hyp, normalize=False) == pytest.approx(jiwer.wer(ref, hyp)), (ref, hyp)
