"""SQuAD v1.1 metric on hand-checked answers (values worked out by hand from the official
normalisation: lower, strip punctuation, drop a/an/the, collapse whitespace)."""

from __future__ import annotations

import pytest

from inference.squad_metric import best_over_golds, exact_match, f1, normalize_answer, squad_scores


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The  Quick, brown fox!", "quick brown fox"),
        ("An apple a day", "apple day"),
        ("a banana", "banana"),  # articles only as whole words
        ("Theatre of the Absurd", "theatre of absurd"),
        ("  U.S.-led\tcoalition ", "usled coalition"),  # punctuation removed, not replaced
        ("the", ""),
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_exact_match_after_normalisation() -> None:
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0


def test_f1_is_token_overlap() -> None:
    # pred {quick, brown, fox} vs gold {brown, fox, jumps}: 2 common, P = R = 2/3
    assert f1("quick brown fox", "the brown fox jumps") == pytest.approx(2 / 3)
    # pred {denver, broncos} vs gold {broncos}: P = 1/2, R = 1 -> F1 = 2/3
    assert f1("Denver Broncos", "the Broncos") == pytest.approx(2 / 3)
    assert f1("Carolina Panthers", "Denver Broncos") == 0.0
    assert f1("", "") == 0.0  # official script: no common tokens -> 0


def test_f1_counts_repeated_tokens_once_each() -> None:
    # pred {new, new, york} vs gold {new, york}: common = min counts = 2; P = 2/3, R = 1 -> 0.8
    assert f1("new new york", "New York") == pytest.approx(0.8)


def test_best_over_gold_answers() -> None:
    golds = ["Denver Broncos", "Broncos", "the Denver Broncos"]
    assert best_over_golds(exact_match, "broncos", golds) == 1.0
    # "Broncos win" vs "Broncos": P = 1/2, R = 1 -> 2/3 beats 1/2 against "Denver Broncos"
    assert best_over_golds(f1, "Broncos win", golds) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="needs at least one gold answer"):
        best_over_golds(f1, "x", [])


def test_squad_scores_are_percent_means() -> None:
    scores = squad_scores([("Denver Broncos", ["Denver Broncos"]), ("Broncos win", ["Broncos"])])
    assert scores["questions"] == 2
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="no questions to score"):
        squad_scores([])
