"""Parity of an exported ONNX file against the torch model it came from, through serving code.

The fp32 file is checked against torch on the fixed set (a graph check: float noise or a bug);
each int8 candidate against the fp32 file on the fixed set plus the model's own items, so that
torch, the slowest of the three, runs only the fixed set.

Both sides run through `app.backends.load_backend` and the task pipelines of `app.tasks`, so a
pass means the *served* ONNX numbers match the *served* torch numbers, tokenisation and pooling
included. Inputs are real-looking texts of varied length, run in odd-sized batches and one alone,
so a graph that only works for the traced batch/sequence sizes fails here.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.backends import Backend
from inference.modelfolder import ModelSpec
from inference.tasks import classify as classify_task
from inference.tasks import embed, lead, load_tokenizer, pad_batch, pad_id, qa

PARITY_TEXTS: tuple[str, ...] = (
    "A gripping, beautifully shot film that never lets go of you.",
    "The plot is thin and the jokes fall flat.",
    "I expected more from such a talented cast; the second half drags badly.",
    "An unexpectedly moving story about a family that refuses to give up.",
    "It's fine.",
    "The central bank raised interest rates by a quarter of a percentage point on Wednesday, citing persistent "
    "inflation in services.",
    "How do I reset my password if I no longer have access to my email?",
    "Heavy rain is expected across the north of the country through the weekend.",
    "The new phone has a brighter screen, but the battery barely lasts a day.",
    "Researchers found that the enzyme breaks down plastic bottles within a few weeks at room temperature.",
    "Please send the signed contract back to us before Friday.",
    "Worst customer service I have ever experienced, and I have been a customer for ten years.",
    "The museum reopens next month after a two-year renovation of its east wing, which houses the collection of "
    "Byzantine mosaics donated in 1962.",
    "Is the restaurant open on public holidays?",
    "A man is playing a guitar on the street.",
    "Two dogs are running through a field of tall grass.",
    "The committee will publish its final report, including the recommendations on data retention, in the spring.",
    "Great value for money.",
    "The hotel room was clean, quiet and much larger than the photos suggested.",
    "Stocks fell sharply after the company warned that profits would miss expectations.",
    "She won the marathon in a record time despite the heat.",
    "Nothing about this sequel works: not the script, not the acting, not the music.",
    "The software update fixes a bug that caused the app to crash on start-up.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
)

PARITY_QA: tuple[tuple[str, str], ...] = (
    ("When did the museum reopen?", "After a two-year renovation of its east wing, the city museum reopened in May "
     "2019. The wing houses a collection of Byzantine mosaics that a private collector donated in 1962."),
    ("Who donated the mosaics?", "After a two-year renovation of its east wing, the city museum reopened in May 2019. "
     "The wing houses a collection of Byzantine mosaics that a private collector donated in 1962."),
    ("What does photosynthesis produce?", "Photosynthesis is the process by which green plants use sunlight to turn "
     "carbon dioxide and water into glucose and oxygen. It takes place mainly in the leaves, inside the chloroplasts."),
    ("Where does photosynthesis take place?", "Photosynthesis is the process by which green plants use sunlight to "
     "turn carbon dioxide and water into glucose and oxygen. It takes place mainly in the leaves, inside the "
     "chloroplasts."),
    ("How much did the bank raise rates?", "On Wednesday the central bank raised its main interest rate by a quarter "
     "of a percentage point, to 4.5 percent, citing persistent inflation in services and a tight labour market."),
    ("Who won the marathon?", "Kenyan runner Ruth Chepngetich won the Chicago marathon on Sunday in a record time "
     "of two hours, nine minutes and 56 seconds, despite temperatures above 25 degrees."),
    ("What did the update fix?", "Version 3.2 of the app, released on Tuesday, fixes a bug that caused it to crash "
     "on start-up on older phones, and adds a dark mode that many users had asked for."),
)

# fp32 must match torch to float noise; int8 must keep the served answer (label / span), keep
# the probabilities behind it close (classes; each window's start and end) and stay close in
# direction (embeddings). Values chosen from the measurements in the report.
TOLERANCES: dict[str, dict[str, dict[str, float]]] = {
    "fp32": {
        "classification": {"max_abs_diff": 1e-3, "label_agreement": 1.0},
        "qa": {"max_abs_diff": 2e-3, "span_agreement": 1.0},
        "embedding": {"max_abs_diff": 2e-3, "min_cosine": 0.9999},
    },
    "int8": {
        "classification": {"label_agreement": 0.95, "max_prob_diff": 0.1},
        # QA: the span alone passed a dynamic int8 teacher (7 of 7 spans) whose start/end
        # probabilities moved by 0.39 and which then kept 61% of 1,572 SQuAD spans; blockwise8
        # moved them by 0.068 on the same model (squad-standard-teacher, 2026-12-02)
        # and with 0.85 on 23 items a dynamic student kept 0.93 of 300 report spans (2026-12-06)
        "qa": {"span_agreement": 0.95, "max_prob_diff": 0.1},
        "embedding": {"mean_cosine": 0.99, "min_cosine": 0.98},
    },
    # int8 as served with its guard (`training.int8_choice`): near ties answered by fp32, so the
    # answers must agree to the quality issue's 99.5%; the probabilities of the items left to
    # int8 stay as close as bare int8's must
    "int8-guarded": {
        "classification": {"label_agreement": 0.995, "max_prob_diff": 0.1},
        "qa": {"span_agreement": 0.995, "max_prob_diff": 0.1},
    },
}
_AT_MOST = ("max_abs_diff", "max_prob_diff")
BATCH = 7  # odd on purpose: never the traced batch size
log = logging.getLogger(__name__)
OWN_ITEMS = {"classification": 128, "embedding": 128, "qa": 48}  # real items checked beside the fixed set


def tolerance_of(precision: str, task: str, tolerances: dict[str, dict[str, float]] | None) -> dict[str, float]:
    """`tolerances[precision]` where given (a strict build, a test, `--tolerance`), else the default."""
    return (tolerances or {}).get(precision) or TOLERANCES[precision][task]


def own_items(manifest: dict, task: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Items of the model's own data that its int8 parity check runs beside the fixed set: its
    validation split's texts (classification), its training sentences (embeddings: parity
    compares two files of one model, no quality figure is tuned on it), its validation articles'
    questions (QA); never a report set. Empty when the manifest names no such file or the file
    is not on this machine (a model folder copied elsewhere): the fixed set alone."""
    from training.data import is_hub_spec, squad_examples, texts_of
    from training.tasks.common import data_path

    validation, count = manifest.get("validation") or {}, OWN_ITEMS.get(task, 0)
    source = (manifest.get("recipe") or {}).get("train_data") if task == "embedding" else validation.get("path")
    if not source or is_hub_spec(str(source)):
        return [], []
    try:
        path = data_path(str(source))
        if task == "qa":
            return [], [(e.question, e.context) for e in squad_examples(path, validation["articles"])[0][:count]]
        return texts_of(path, count), []
    except (OSError, KeyError, ValueError) as exc:  # ValueError: a DataError naming file and line
        log.info("parity on the fixed set only: the model's own items are not readable here (%s)", exc)
        return [], []


class ExportParityError(RuntimeError):
    """An exported file breached a parity tolerance; the export fails and the file is removed."""

    def __init__(self, file: str, metric: str, value: float, tolerance: float) -> None:
        side = "<=" if metric in _AT_MOST else ">="
        super().__init__(f"{file}: parity {metric}={value:.6g} breaches tolerance {side} {tolerance:g}")
        self.file, self.metric, self.value, self.tolerance = file, metric, value, tolerance


@dataclass
class Outputs:
    """What one backend produced on the parity set: raw tensors (one per item; per window for
    QA, `counts` per item) and the served answer per item (logits, (start, end) span or pooled
    unit vector); for classification and QA also each item's `records` as `evaluate` writes
    them (prediction, runner_up, lead), which the int8 guard is chosen from."""

    raw: list[np.ndarray]
    answers: list[Any]
    counts: list[int] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def part(self, start: int, stop: int) -> Outputs:
        """Items [start, stop)."""
        first, last = sum(self.counts[:start]), sum(self.counts[:stop])
        return Outputs(self.raw[first:last], self.answers[start:stop], self.counts[start:stop],
                       self.records[start:stop])


def breaches(parity: dict[str, float], tolerance: dict[str, float]) -> list[tuple[str, float, float]]:
    """(metric, value, tolerance) for every metric outside its tolerance."""
    bad = []
    for metric, limit in tolerance.items():
        if metric not in parity:
            raise ValueError(f"no parity metric {metric!r}; this task has {sorted(parity)}")
        value = parity[metric]
        if (value > limit) if metric in _AT_MOST else (value < limit):
            bad.append((metric, value, limit))
    return bad


AGREEMENTS = ("label_agreement", "span_agreement")


def final_breaches(figures: dict[str, float], tolerance: dict[str, float], total: int
                   ) -> list[tuple[str, float, float]]:
    """Breaches that `figures`, measured on the first items of a set of `total`, already make
    certain whatever the other items show: a maximum over its limit, a minimum cosine under its
    limit, or more answers changed than the whole set allows (reported as the best agreement the
    whole set could still reach). Why: a candidate that fails is then rejected on a third of the
    set (the dynamic QA teacher file changed 18 of 55 spans)."""
    bad = []
    for metric, limit in tolerance.items():
        value = figures.get(metric)
        if value is None:
            continue
        if (metric in _AT_MOST and value > limit) or (metric == "min_cosine" and value < limit):
            bad.append((metric, value, limit))
        elif metric in AGREEMENTS and (best := 1 - round((1 - value) * figures["items"]) / total) < limit:
            bad.append((metric, best, limit))
    return bad


@dataclass(frozen=True)
class ParitySet:
    """The items one parity check runs: `texts` (None: the fixed set) or, for QA, the fixed
    questions followed by `qa_pairs`."""

    texts: tuple[str, ...] | None = None
    qa_pairs: tuple[tuple[str, str], ...] = ()

    def run(self, backend: Backend, spec: ModelSpec, start: int = 0, stop: int | None = None) -> Outputs:
        """Items [start, stop) (cut at `batch_edges`), in the batches a whole run gives them."""
        return run_parity_set(backend, spec, self.texts, self.qa_pairs, start, stop)

    def size(self, task: str) -> int:
        return len(PARITY_QA) + len(self.qa_pairs) if task == "qa" else len(self.texts or PARITY_TEXTS)

    def head_size(self, task: str) -> int:
        """About the first third of the items, ending where a batch of the whole run ends, so a
        check can start on them and go on with the rest (`run`'s start) as one whole run would."""
        if task == "qa":  # each question runs alone
            return len(PARITY_QA) + len(self.qa_pairs) // 3
        total = self.size(task)
        return min(total, 1 + BATCH * max(1, total // (3 * BATCH)))


def prefix(outputs: Outputs, like: Outputs) -> Outputs:
    """The first entries of `outputs`, as many as a run on the first items (`like`) produced."""
    return outputs.part(0, len(like.answers))


def joined(*parts: Outputs) -> Outputs:
    """The outputs of consecutive parts of one set, as one."""
    return Outputs([r for p in parts for r in p.raw], [a for p in parts for a in p.answers],
                   [c for p in parts for c in p.counts], [r for p in parts for r in p.records])


def served(reference: Outputs, got: Outputs, threshold: float) -> Outputs:
    """What the service answers with the int8 guard (`inference.guard`): `got` (int8), except
    the items whose lead is under `threshold`, which are `reference`'s (fp32's). (Of a QA item
    the service reads again only the windows that can hold fp32's answer, `Guard.contenders`:
    the same answer wherever int8 moved no score ratio by more than the threshold.)"""
    near = [float(r["lead"]) < threshold for r in got.records]
    return joined(*((reference if n else got).part(k, k + 1) for k, n in enumerate(near)))


def batch_edges(count: int) -> list[int]:
    """Where a whole run's batches start (and the end): one item alone, then batches of `BATCH`."""
    return [0, *range(1, count, BATCH), count] if count else [0]


def run_parity_set(backend: Backend, spec: ModelSpec, texts: Sequence[str] | None = None,
                   qa_pairs: Sequence[tuple[str, str]] = (), start: int = 0, stop: int | None = None) -> Outputs:
    """Run the parity inputs through `backend` the way the service does for `spec.task`: `texts`
    (default the fixed set), or for QA the fixed (question, context) pairs plus `qa_pairs`; only
    items [start, stop), which must fall on `batch_edges`, batched as in a whole run."""
    tokenizer = load_tokenizer(spec.path, None if spec.task == "qa" else spec.max_length)
    if spec.task == "qa":
        return _run_qa(backend, tokenizer, spec.max_length, (*PARITY_QA, *qa_pairs)[start:stop])
    texts = list(texts or PARITY_TEXTS)
    edges, stop = batch_edges(len(texts)), len(texts) if stop is None else stop
    if start not in edges or stop not in edges:
        raise ValueError(f"parity items [{start}, {stop}) do not fall on batch edges {edges}")
    seqs = (embed if spec.task == "embedding" else classify_task).encode(tokenizer, texts[start:stop], spec.max_length)
    pad, raw, answers = pad_id(tokenizer), [], []
    for a, b in zip(edges, edges[1:], strict=False):
        if a < start or b > stop:
            continue
        inputs = pad_batch(seqs[a - start : b - start], pad)
        out = backend.forward(inputs)
        if spec.task == "embedding":
            hidden, mask = out["last_hidden_state"], inputs["attention_mask"]
            raw += [h[m.astype(bool)] for h, m in zip(hidden, mask, strict=False)]
            answers += list(embed.normalize(embed.pool(hidden, mask, spec.pooling)))
        else:
            raw += list(out["logits"])
            answers += list(out["logits"])
    records = [_label_record(a, spec) for a in answers] if spec.task == "classification" else []
    return Outputs(raw, answers, [1] * len(answers), records)


def _label_record(logits: np.ndarray, spec: ModelSpec) -> dict[str, Any]:
    """The best label, the second and the lead between them, scored as the served pipeline
    scores them (`classify.postprocess`)."""
    function = classify_task.score_function(len(logits), spec.problem_type)
    labels = classify_task.postprocess(logits, spec.labels or {}, 2, function)
    return {"prediction": labels[0]["label"], "runner_up": labels[1]["label"] if len(labels) > 1 else None,
            "lead": lead([float(label["score"]) for label in labels], function != "none")}


def _run_qa(backend: Backend, tokenizer: Any, max_length: int, pairs: Sequence[tuple[str, str]]) -> Outputs:
    """Each (question, context) in windows, decoded to the served best span (and the second)."""
    pad, raw, answers, counts, records = pad_id(tokenizer), [], [], [], []
    for question, context in pairs:
        windows = qa.encode_qa(tokenizer, question, context, max_length, 128)
        inputs = pad_batch(windows, pad)
        out = backend.forward(inputs)
        starts = [s[: w.tokens] for s, w in zip(out["start_logits"], windows, strict=False)]
        ends = [e[: w.tokens] for e, w in zip(out["end_logits"], windows, strict=False)]
        raw += [np.concatenate([s, e]) for s, e in zip(starts, ends, strict=False)]
        best = [(a["start"], a["end"], float(a["score"])) for a in qa.decode_qa(windows, starts, ends, context, 2)]
        answers.append(best[0][:2] if best else None)
        counts.append(len(windows))
        records.append({"prediction": answers[-1], "runner_up": best[1][:2] if len(best) > 1 else None,
                        "lead": lead([score for _, _, score in best])})
    return Outputs(raw, answers, counts, records)


def compare(task: str, ref: Outputs, got: Outputs) -> dict[str, float]:
    """Parity figures of `got` against the reference `ref` (torch for fp32, the fp32 file for int8)."""
    max_abs = max(float(np.abs(a - b).max()) for a, b in zip(ref.raw, got.raw, strict=False))
    figures: dict[str, float] = {"max_abs_diff": max_abs, "items": len(ref.answers)}
    if task == "classification":
        ref_logits, got_logits = np.stack(ref.answers), np.stack(got.answers)
        figures["label_agreement"] = float((ref_logits.argmax(1) == got_logits.argmax(1)).mean())
        diff = classify_task.scores(ref_logits) - classify_task.scores(got_logits)
        figures["max_prob_diff"] = float(np.abs(diff).max())
    elif task == "qa":
        figures["span_agreement"] = float(np.mean([a == b for a, b in zip(ref.answers, got.answers, strict=False)]))
        figures["max_prob_diff"] = max(_span_prob_diff(a, b) for a, b in zip(ref.raw, got.raw, strict=False))
    else:
        cosines = (np.stack(ref.answers) * np.stack(got.answers)).sum(1)
        figures["mean_cosine"], figures["min_cosine"] = float(cosines.mean()), float(cosines.min())
    return figures


def _span_prob_diff(ref: np.ndarray, got: np.ndarray) -> float:
    """Largest move of one window's start or end probability (softmax over its tokens): a span
    can stay the same on a few parity texts while the distribution behind it drifts."""
    half = len(ref) // 2  # raw QA outputs are [start logits, end logits] of the window's tokens
    return max(float(np.abs(classify_task.scores(r[None]) - classify_task.scores(g[None])).max())
               for r, g in ((ref[:half], got[:half]), (ref[half:], got[half:])))
