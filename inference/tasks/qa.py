"""Extractive QA: question-first windows over long contexts, and HF-pipeline span decoding.

Windowing is done here (not by the tokenizer's truncation settings) so that `doc_stride` can
vary per request while one tokenizer is shared by every request of a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from inference.tasks import configure

_MASKED = -10000.0
_EDGE_PUNCT = frozenset(",.;:!?")  # dropped from an answer's ends; brackets and quotes are kept


@dataclass(slots=True)
class QAWindow:
    """One model input: question + one slice of the context.

    `offsets[i]` is the (start, end) character span in the context of token i, or None for
    question and special tokens, which can never be part of an answer.
    """

    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int] | None]
    cls_index: int | None
    truncated: bool = False
    context_windows: int | None = None  # set by select_windows: the windows the whole context made

    @property
    def tokens(self) -> int:
        return len(self.ids)


def _question(tokenizer: Tokenizer, question: str, max_length: int, specials: int) -> tuple[Encoding, bool]:
    """The question's tokens; cut to half the window when it would leave no room for context."""
    enc = tokenizer.encode(question, add_special_tokens=False)
    limit = (max_length - specials) // 2
    if len(enc.ids) <= limit:
        return enc, False
    enc.truncate(limit)
    return enc, True


def encode_qa(
    tokenizer: Tokenizer, question: str, context: str, max_length: int, doc_stride: int
) -> list[QAWindow]:
    """Question first, context second; the context is cut into windows that overlap by
    `doc_stride` tokens, at most half a window (only the context is ever truncated, as HF's
    only_second). A question longer than half the window is cut and flagged `truncated`."""
    configure(tokenizer, None)
    specials = tokenizer.num_special_tokens_to_add(True)
    q_enc, q_cut = _question(tokenizer, question, max_length, specials)
    budget = max_length - specials - len(q_enc.ids)
    c_enc = tokenizer.encode(context, add_special_tokens=False)
    stride = max(0, min(doc_stride, budget // 2))  # bounded: a stride near the window would
    # step one token at a time and turn one context into thousands of windows
    c_enc.truncate(budget, stride=stride)
    return [_window(tokenizer, q_enc, part, q_cut) for part in [c_enc, *c_enc.overflowing]]


def select_windows(windows: Sequence[QAWindow], question_ids: Sequence[int], keep: int) -> list[QAWindow]:
    """The ``keep`` windows whose context shares most with the question, in context order.

    A long context costs one model pass per window; most windows cannot hold the answer. Each
    window scores the IDF-weighted overlap of its context tokens with the question's (IDF over
    this context's windows, so words in every window count for nothing), the retriever step of a
    retriever-reader, at no model cost. Ties keep the earlier window."""
    if len(windows) <= keep:
        return list(windows)
    bags = [{t for t, o in zip(w.ids, w.offsets, strict=False) if o is not None} for w in windows]
    wanted = set(question_ids)
    df = {t: sum(t in bag for bag in bags) for t in wanted}
    idf = {t: float(np.log((len(bags) + 1) / (n + 0.5))) for t, n in df.items() if n}
    scores = [sum(idf.get(t, 0.0) for t in wanted & bag) for bag in bags]
    best = sorted(range(len(windows)), key=lambda i: (-scores[i], i))[:keep]
    chosen = [windows[i] for i in sorted(best)]
    for window in chosen:
        window.context_windows = len(windows)
    return chosen


def question_ids(tokenizer: Tokenizer, question: str) -> list[int]:
    """The question's token ids, as `encode_qa` puts them before each window's context."""
    return list(tokenizer.encode(question, add_special_tokens=False).ids)


def _window(tokenizer: Tokenizer, q_enc: Encoding, c_part: Encoding, q_cut: bool) -> QAWindow:
    full = tokenizer.post_process(q_enc, c_part, add_special_tokens=True)
    seq_ids = full.sequence_ids
    offsets = [off if sid == 1 else None for off, sid in zip(full.offsets, seq_ids, strict=False)]
    cls_index = 0 if full.special_tokens_mask[0] == 1 else None
    return QAWindow(full.ids, full.type_ids, offsets, cls_index, q_cut)


def _window_spans(
    window: QAWindow, start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int
) -> tuple[list[tuple[int, int, float]], float]:
    """HF `select_starts_ends` + `decode_spans` for one window: softmax over the window with
    non-context tokens masked (CLS kept), then the best `top_k` spans of ≤ max_answer_len."""
    n = len(window.ids)
    context = np.array([o is not None for o in window.offsets])
    keep = context.copy()
    if window.cls_index is not None:
        keep[window.cls_index] = True
    p_start = _masked_softmax(start[:n], keep)
    p_end = _masked_softmax(end[:n], keep)
    cls = window.cls_index if window.cls_index is not None else 0
    null = float(p_start[cls] * p_end[cls])
    p_start[cls] = p_end[cls] = 0.0
    outer = np.tril(np.triu(np.outer(p_start, p_end)), max_answer_len - 1)
    flat = outer.ravel()
    k = min(top_k, flat.size)
    idx = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    idx = idx[np.argsort(-flat[idx], kind="stable")]
    spans = []
    for s, e in zip(*np.unravel_index(idx, outer.shape), strict=False):
        if context[s] and context[e]:
            spans.append((int(s), int(e), float(outer[s, e])))
    return spans, null


def _masked_softmax(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    x = np.where(keep, np.asarray(logits, dtype=np.float64), _MASKED)
    e = np.exp(x - x.max())
    probs: np.ndarray = e / e.sum()
    return probs


def decode_qa(
    windows: Sequence[QAWindow],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    context: str,
    top_k: int = 1,
    max_answer_len: int = 15,
    handle_impossible_answer: bool = False,
    window_best: list[float] | None = None,
) -> list[dict[str, str | float | int]]:
    """Best answers over all windows as `{"answer", "score", "start", "end"}` with
    `context[start:end] == answer`; the empty answer competes when `handle_impossible_answer`
    (its score is the lowest CLS-CLS probability over windows, as in the HF pipeline).
    `window_best`, when given, receives each window's best answer score (0.0: none)."""
    answers: list[dict[str, str | float | int]] = []
    min_null = 1_000_000.0
    for window, start, end in zip(windows, start_logits, end_logits, strict=False):
        spans, null = _window_spans(window, np.asarray(start), np.asarray(end), top_k, max_answer_len)
        min_null = min(min_null, null)
        best = 0.0
        for s, e, score in spans:
            first, last = window.offsets[s], window.offsets[e]
            if first is None or last is None:  # spans are drawn from context tokens only
                continue
            begin, finish = answer_bounds(context, first[0], last[1])
            if begin < finish:
                answers.append({"answer": context[begin:finish], "score": score, "start": begin, "end": finish})
                best = max(best, score)
        if window_best is not None:
            window_best.append(best)
    if handle_impossible_answer:
        answers.append({"answer": "", "score": min_null, "start": 0, "end": 0})
    answers.sort(key=lambda a: a["score"], reverse=True)
    return _distinct(answers)[:top_k]


def answer_bounds(context: str, begin: int, finish: int) -> tuple[int, int]:
    """A token span's characters as an answer: widened to whole words (HF's `align_to_words`:
    a sub-word token never starts or ends an answer mid-word), then trimmed of the spaces and
    the sentence punctuation a span picks up at its edges ("24-10." -> "24-10")."""
    while begin > 0 and context[begin - 1].isalnum() and context[begin].isalnum():
        begin -= 1
    while finish < len(context) and context[finish].isalnum() and context[finish - 1].isalnum():
        finish += 1
    while begin < finish and (context[begin].isspace() or context[begin] in _EDGE_PUNCT):
        begin += 1
    while finish > begin and (context[finish - 1].isspace() or context[finish - 1] in _EDGE_PUNCT):
        finish -= 1
    return begin, finish


def _distinct(answers: list[dict[str, str | float | int]]) -> list[dict[str, str | float | int]]:
    """Answers sorted best first, each (start, end) once: two token spans can widen to one word span."""
    seen: set[tuple[object, object]] = set()
    kept = []
    for answer in answers:
        key = (answer["start"], answer["end"])
        if key not in seen:
            seen.add(key)
            kept.append(answer)
    return kept
