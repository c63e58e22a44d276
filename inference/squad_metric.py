"""The official SQuAD v1.1 metric (evaluate-v1.1.py), re-stated so QA scores are comparable.

Answers are normalised exactly as the official script does - lower-case, drop punctuation, drop
the articles a/an/the, collapse whitespace - before exact match and token F1 are computed; a
prediction is scored against every gold answer and the best score counts.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, remove articles, collapse whitespace (official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-level F1 of the normalised answers (bag of tokens, as the official script)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """The official `metric_max_over_ground_truths`: a question counts its best gold answer."""
    if not golds:
        raise ValueError("a SQuAD question needs at least one gold answer")
    return float(max(metric(prediction, gold) for gold in golds))


def squad_scores(pairs: Iterable[tuple[str, Sequence[str]]]) -> dict[str, float]:
    """Mean EM and F1 in percent (as the official script prints them) over (prediction, golds)."""
    total = em_sum = f1_sum = 0.0
    for prediction, golds in pairs:
        total += 1
        em_sum += best_over_golds(exact_match, prediction, golds)
        f1_sum += best_over_golds(f1, prediction, golds)
    if not total:
        raise ValueError("no questions to score")
    return {"exact_match": 100.0 * em_sum / total, "f1": 100.0 * f1_sum / total, "questions": int(total)}
