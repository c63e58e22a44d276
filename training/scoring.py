"""Per-item scoring of one data set through the serving pipeline: every figure `evaluate`
records is the mean (or correlation) of per-item records kept beside the manifest, so that
intervals, teacher/student retention and cascade calibration are computed from the same items.

A record per item: classification {"i", "gold", "prediction", "correct", "labels"} (every
label's score, best first); SQuAD {"i", "id", "prediction", "score", "f1", "exact_match"} (F1
and EM on a 0-1 scale); both also {"lead", "runner_up"} and, for an item an int8 guard read
again in fp32, {"rechecked", "int8_prediction"} (`near_tie`); STS-B {"i", "cosine", "gold"}.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.evaluation import Served
from inference.intervals import Interval, interval, mean_of, spearman_of
from inference.modelfolder import ModelSpec
from inference.pipelines import ClassifyItem, EmbedItem, QAItem
from inference.squad_metric import best_over_golds, exact_match, f1
from training.data import Columns, DataError, is_hub_spec, load_labelled, squad_examples

Run = Callable[[list[Any]], Served]


@dataclass
class Scored:
    """A data set's figures (headline first), its per-item records, and the serving run."""

    figures: dict[str, float]
    records: list[dict[str, Any]]
    served: Served
    headline: str

    def interval(self) -> Interval:
        """The headline figure with its 95% bootstrap interval over the items."""
        return headline_interval(self.headline, self.records)


def headline_interval(headline: str, records: Sequence[dict[str, Any]]) -> Interval:
    return interval(headline_statistic(headline, records), len(records))


def headline_statistic(headline: str, records: Sequence[dict[str, Any]]) -> Callable[[np.ndarray], np.ndarray]:
    """The bootstrap statistic of a headline figure over per-item records."""
    if headline == "spearman":
        return spearman_of([r["cosine"] for r in records], [r["gold"] for r in records])
    key = {"accuracy": "correct", "f1": "f1", "exact_match": "exact_match"}[headline]
    scale = 100.0 if headline in ("f1", "exact_match") else 1.0  # SQuAD figures are quoted in points
    return mean_of([scale * r[key] for r in records])


def near_tie(result: dict[str, Any], key: str) -> dict[str, Any]:
    """How far the best answer led the second (`inference.tasks.lead`; null with one candidate),
    which answer was second (`runner_up`), and, where an int8 guard read the item again in fp32,
    what the bare int8 file had answered (its top `key`): what `int8_guard` calibrates on and
    `agreement` reports both ways."""
    ahead = result.get("lead")
    fields: dict[str, Any] = {"lead": round(ahead, 6) if isinstance(ahead, float) and math.isfinite(ahead) else None,
                              "runner_up": result.get("runner_up")}
    if result.get("rechecked"):
        int8 = result.get("int8_result") or []
        fields.update(rechecked=True, int8_prediction=int8[0][key] if int8 else "")
    return fields


def score_classification(spec: ModelSpec, run: Run, path: Path | str, limit: int | None,
                         columns: Columns | None = None) -> Scored:
    """Accuracy; gold labels are mapped through the model's label names (or their indices); a
    label the model does not know is a DataError naming the file, the line and the label."""
    if not spec.labels:
        raise ValueError(f"{spec.path}: a classification model needs labels (config id2label)")
    names = [spec.labels[i] for i in sorted(spec.labels)]
    examples, _ = load_labelled(path, labels=names, limit=limit, split="eval", **(columns or Columns()).read_args())
    items = [ClassifyItem(i, (e.text, e.text_pair) if e.text_pair else e.text, top_k=None)
             for i, e in enumerate(examples)]
    served = run(items)
    records = []
    for i, (result, example) in enumerate(zip(served.results, examples, strict=True)):
        gold = names[int(example.label)] if example.label is not None else None
        predicted = result["result"][0]["label"]
        records.append({"i": i, "gold": gold, "prediction": predicted, "correct": int(predicted == gold),
                        "labels": result["result"], **near_tie(result, "label")})
    accuracy = float(np.mean([r["correct"] for r in records]))
    return Scored({"accuracy": accuracy}, records, served, "accuracy")


def score_stsb(spec: ModelSpec, run: Run, path: Path | str, limit: int | None,
               columns: Columns | None = None) -> Scored:
    """Spearman (and Pearson) of the cosine of the two sentences' served embeddings vs gold."""
    from scipy.stats import pearsonr, spearmanr

    examples, _ = load_labelled(path, labels=None, limit=limit, split="eval", **(columns or Columns()).read_args())
    missing = [i for i, e in enumerate(examples) if not e.text_pair]
    if missing:
        row = missing[0] if is_hub_spec(path) else missing[0] + 2  # hub: row index; file: line (after the header)
        raise DataError(path, row, "STS-B rows need two sentences (sentence1, sentence2)")
    texts = [e.text for e in examples] + [e.text_pair for e in examples if e.text_pair]  # every row has both
    served = run([EmbedItem(i, t, normalize=True) for i, t in enumerate(texts)])
    vectors = np.stack([r["result"] for r in served.results])
    cosines = (vectors[: len(examples)] * vectors[len(examples) :]).sum(1)
    gold = np.array([e.label for e in examples], dtype=np.float64)
    figures = {"spearman": float(spearmanr(cosines, gold).statistic),
               "pearson": float(pearsonr(cosines, gold).statistic)}
    pairs = zip(cosines, gold, strict=True)
    records = [{"i": i, "cosine": float(c), "gold": float(g)} for i, (c, g) in enumerate(pairs)]
    return Scored(figures, records, served, "spearman")


def score_squad(spec: ModelSpec, run: Run, path: Path | str, limit: int | None,
                articles: Sequence[int] | None) -> Scored:
    """Official SQuAD v1.1 EM/F1 (max over gold answers) of the served best answer."""
    examples, _ = squad_examples(path, articles)
    examples = examples[:limit] if limit else examples
    if not examples:
        raise DataError(path, 1, f"no questions in articles {articles}")
    served = run([QAItem(i, e.question, e.context) for i, e in enumerate(examples)])
    records = []
    for i, (result, example) in enumerate(zip(served.results, examples, strict=True)):
        best: dict[str, Any] = result["result"][0] if result["result"] else {"answer": "", "score": 0.0}
        records.append({"i": i, "id": example.qid, "prediction": best["answer"], "score": float(best["score"]),
                        "f1": best_over_golds(f1, best["answer"], example.answers),
                        "exact_match": best_over_golds(exact_match, best["answer"], example.answers),
                        **near_tie(result, "answer")})
    figures = {"exact_match": 100.0 * float(np.mean([r["exact_match"] for r in records])),
               "f1": 100.0 * float(np.mean([r["f1"] for r in records]))}
    return Scored(figures, records, served, "f1")
