"""Adapters from the pure task functions (`inference.tasks`) to a batcher: what one queued item
is, how a collected group is tokenized (in the worker thread), how a model call's output is
reduced per batch, and how each item's result is assembled."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from tokenizers import Tokenizer

from inference.modelfolder import ModelSpec
from inference.tasks import Encoded, classify, embed, lead, load_tokenizer, pad_batch, pad_id, qa
from inference.tasks.classify import score_function

if TYPE_CHECKING:
    from inference.backends import Backend

Rows = list[dict[str, np.ndarray]]


class Pipeline(Protocol):
    task: str
    tokenizer: Tokenizer

    def encode(self, payloads: Sequence[Any]) -> list[Sequence[Any] | Exception]: ...
    def reduce(self, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def finish(self, payload: Any, seqs: Sequence[Any], rows: Rows) -> dict[str, Any]: ...


def run_once(pipeline: Pipeline, backend: Backend, pad: int, payloads: Sequence[Any]) -> dict[str, np.ndarray]:
    """Every stage for `payloads` as one model call (tokenize, pad, run, reduce, finish each
    item), outside the batcher: warm-up, the batcher's calibration and the in-process benchmark.
    The payloads must be valid (an encoding error is raised). Returns the padded inputs."""
    encoded = [valid_sequences(e) for e in pipeline.encode(payloads)]
    inputs = pad_batch([s for e in encoded for s in e], pad)
    outputs = pipeline.reduce(backend.forward(inputs), inputs)
    at = 0
    for payload, seqs in zip(payloads, encoded, strict=False):
        pipeline.finish(payload, seqs, [{k: v[i] for k, v in outputs.items()} for i in range(at, at + len(seqs))])
        at += len(seqs)
    return inputs


def run_sorted(pipeline: Pipeline, backend: Backend, pad: int, encoded: list[Any], batch_size: int
                ) -> list[list[dict[str, Any]]]:
    """Every sequence of `encoded` (per payload) through `backend` in calls of at most
    `batch_size`, sorted by length so that each call pads little (and costs what it does when
    served); returns the reduced rows per payload per sequence (`evaluate`, the int8 guard)."""
    flat = sorted(((j, k) for j, seqs in enumerate(encoded) for k in range(len(seqs))),
                  key=lambda jk: len(encoded[jk[0]][jk[1]].ids))
    rows: list[list[dict[str, Any]]] = [[{}] * len(seqs) for seqs in encoded]
    for b in range(0, len(flat), batch_size):
        batch = flat[b : b + batch_size]
        inputs = pad_batch([encoded[j][k] for j, k in batch], pad)
        outputs = pipeline.reduce(backend.forward(inputs), inputs)
        for row, (j, k) in enumerate(batch):
            rows[j][k] = {name: value[row] for name, value in outputs.items()}
    return rows


def valid_sequences(encoded: Sequence[Any] | Exception) -> Sequence[Any]:
    """An item's sequences; an encoding error (an invalid payload) is raised, not skipped."""
    if isinstance(encoded, Exception):
        raise encoded
    return encoded


def concurrent_throughput(pipeline: Pipeline, backend: Backend, pad: int, payloads: Sequence[Any], callers: int = 1,
                          *, calls: int | None = None, seconds: float | None = None) -> tuple[float, int]:
    """(items per second, items done) with `callers` threads each running `run_once` on
    `payloads` back to back, `calls` times or for `seconds`: what the model does with that many
    calls in flight, outside the batcher (warm-up's choice of model workers, the in-process
    benchmark). ONNX Runtime and the tokenizer release the GIL, so the calls really overlap."""
    assert (calls is None) != (seconds is None), "give calls or seconds"
    done = [0] * callers
    start = time.perf_counter()
    limit = calls * len(payloads) if calls is not None else math.inf
    until = start + seconds if seconds is not None else math.inf

    def caller(k: int) -> None:
        while done[k] < limit and time.perf_counter() < until:
            run_once(pipeline, backend, pad, payloads)
            done[k] += len(payloads)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start), sum(done)


@dataclass(slots=True)
class ClassifyItem:
    index: int
    text: str | tuple[str, str]
    truncate: bool = True
    top_k: int | None = 1


@dataclass(slots=True)
class EmbedItem:
    index: int
    text: str
    normalize: bool = True
    truncate: bool = True


@dataclass(slots=True)
class QAItem:
    index: int
    question: str
    context: str
    top_k: int = 1
    max_answer_len: int = 15
    doc_stride: int = 128
    handle_impossible_answer: bool = False
    max_windows: int | None = None  # read only the windows that share most with the question


def _meta(seqs: Sequence[Encoded] | Sequence[qa.QAWindow]) -> dict[str, Any]:
    return {"tokens": sum(s.tokens for s in seqs), "truncated": any(s.truncated for s in seqs)}


def _check_length(item: ClassifyItem | EmbedItem, enc: Encoded, max_length: int) -> list[Encoded] | Exception:
    if enc.truncated and not item.truncate:
        return classify.InputTooLong(item.index, max_length)
    return [enc]


class ClassifyPipeline:
    task = "classification"

    def __init__(self, tokenizer: Tokenizer, max_length: int, id2label: dict[int, str], function: str) -> None:
        self.tokenizer, self.max_length, self.id2label, self.function = tokenizer, max_length, id2label, function

    def encode(self, payloads: Sequence[ClassifyItem]) -> list[Sequence[Any] | Exception]:
        encs = classify.encode(self.tokenizer, [p.text for p in payloads], self.max_length)
        return [_check_length(p, e, self.max_length) for p, e in zip(payloads, encs, strict=False)]

    def reduce(self, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs

    def finish(self, payload: ClassifyItem, seqs: Sequence[Encoded], rows: Rows) -> dict[str, Any]:
        top_k = payload.top_k
        labels = classify.postprocess(rows[0]["logits"], self.id2label, top_k and max(2, top_k), self.function)
        ahead = lead([float(label["score"]) for label in labels], self.function != "none")
        second = labels[1]["label"] if len(labels) > 1 else None
        return {"result": labels[:top_k] if top_k else labels, "lead": ahead, "runner_up": second, **_meta(seqs)}


class EmbedPipeline:
    task = "embedding"

    def __init__(self, tokenizer: Tokenizer, max_length: int, pooling: str) -> None:
        self.tokenizer, self.max_length, self.pooling = tokenizer, max_length, pooling

    def encode(self, payloads: Sequence[EmbedItem]) -> list[Sequence[Any] | Exception]:
        encs = embed.encode(self.tokenizer, [p.text for p in payloads], self.max_length)
        return [_check_length(p, e, self.max_length) for p, e in zip(payloads, encs, strict=False)]

    def reduce(self, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pool the whole batch at once: one vectorised op instead of one per item."""
        return {"embedding": embed.pool(outputs["last_hidden_state"], inputs["attention_mask"], self.pooling)}

    def finish(self, payload: EmbedItem, seqs: Sequence[Encoded], rows: Rows) -> dict[str, Any]:
        vector = rows[0]["embedding"]
        if payload.normalize:
            vector = embed.normalize(vector[None, :])[0]
        return {"result": vector, **_meta(seqs)}


class QAPipeline:
    task = "qa"

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, payloads: Sequence[QAItem]) -> list[Sequence[Any] | Exception]:
        return [self._windows(p) for p in payloads]

    def _windows(self, payload: QAItem) -> list[qa.QAWindow]:
        windows = qa.encode_qa(self.tokenizer, payload.question, payload.context, self.max_length, payload.doc_stride)
        if payload.max_windows is None:
            return windows
        return qa.select_windows(windows, qa.question_ids(self.tokenizer, payload.question), payload.max_windows)

    def reduce(self, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs

    def finish(self, payload: QAItem, seqs: Sequence[qa.QAWindow], rows: Rows) -> dict[str, Any]:
        best: list[float] = []  # per window, for the int8 guard (`inference.guard`)
        answers = qa.decode_qa(
            seqs, [r["start_logits"] for r in rows], [r["end_logits"] for r in rows], payload.context,
            max(2, payload.top_k), payload.max_answer_len, payload.handle_impossible_answer, best,
        )
        ahead = lead([float(a["score"]) for a in answers])  # the best span's lead over the second
        second = answers[1]["answer"] if len(answers) > 1 else None
        total = seqs[0].context_windows if seqs else None
        skipped = {"windows_skipped": total - len(seqs)} if total else {}
        scores = {} if payload.handle_impossible_answer else {"window_scores": best}  # the null answer needs all
        return {"result": answers[: payload.top_k], "lead": ahead, "runner_up": second, **_meta(seqs),
                "windows": len(seqs), **skipped, **scores}


def make_pipeline(spec: ModelSpec) -> tuple[Pipeline, int]:
    """The task adapter and the pad id for one model folder."""
    tokenizer = load_tokenizer(spec.path, None if spec.task == "qa" else spec.max_length)
    if spec.task == "classification":
        labels = spec.labels or {}
        function = score_function(len(labels), spec.problem_type)
        pipeline: Pipeline = ClassifyPipeline(tokenizer, spec.max_length, labels, function)
    elif spec.task == "qa":
        pipeline = QAPipeline(tokenizer, spec.max_length)
    else:
        pipeline = EmbedPipeline(tokenizer, spec.max_length, spec.pooling)
    return pipeline, pad_id(tokenizer)
