"""Long-context QA: /qa latency against context length, on the served model, one request at a time.

  python -m benchmarks.bench_long_qa --model-dir models/squad-quick-student --backends onnx onnx-int8
  python -m benchmarks.bench_long_qa --model-dir models/squad-quick-student --max-windows 0 4 2 --questions 40

The context is the paragraphs of SQuAD articles 30-37 (the report articles) joined in order and
cut so that question + context hold N characters (the service's `max_chars` counts both), for N
up to 19,000 (about 3,700 tokens, the size of a long document a user pastes). The service windows
the context (`doc_stride` tokens of overlap, the request's own knob) and answers from the best
span of any window, so cost grows with the number of windows: the table gives windows and
tokens per point, the median of `--repeats` calls, and each point also at a smaller stride.
Target: 19,000 characters answered in <= 1 s by the student on this machine.

`max_windows` (the request's knob) reads only the k windows that share most words with the
question (0 in `--max-windows`: every window). What that costs in quality is measured on real
questions: `--questions` questions of articles 30-37 whose own paragraph lies inside the long
context, each asked of the whole 19,000 characters at every k: SQuAD F1 against the golds, the
share whose answer equals the every-window answer, and the median latency.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Server

QUESTION = "Which city is the capital of the country?"
LENGTHS = (1000, 2000, 4000, 8000, 12000, 19000)


def long_context(data: Path, articles: range, chars: int) -> str:
    """The articles' paragraphs, in order, joined with blank lines, cut at `chars`."""
    squad = json.loads(data.read_text())["data"]
    text = "\n\n".join(p["context"] for a in articles for p in squad[a]["paragraphs"])
    if len(text) < chars:
        raise ValueError(f"articles {articles.start}-{articles.stop - 1} hold {len(text)} characters, not {chars}")
    return text[:chars]


def ask(url: str, model: str, context: str, doc_stride: int, max_windows: int = 0,
        question: str = QUESTION) -> tuple[float, dict[str, Any]]:
    """One /qa call: seconds, and the response (``max_windows`` 0: every window)."""
    payload = {"question": question, "context": context, "model": model, "doc_stride": doc_stride,
               **({"max_windows": max_windows} if max_windows else {})}
    body = json.dumps(payload).encode()
    request = urllib.request.Request(url + "/qa", body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - start, answer


def sweep(server: Server, text: str, lengths: list[int], strides: list[int], windows: list[int],
          repeats: int) -> list[dict[str, Any]]:
    rows = []
    for chars in lengths:
        context = text[: chars - len(QUESTION)]
        for stride in strides:
            for k in windows:
                ask(server.url, server.name, context[:2000], stride)  # warm the path (not the long shapes)
                calls = [ask(server.url, server.name, context, stride, k) for _ in range(repeats)]
                times, answer = zip(*calls, strict=True)
                item = answer[0]["items"][0]
                rows.append({"chars": chars, "doc_stride": stride, "max_windows": k or None, "tokens": item["tokens"],
                             "windows": item.get("windows"), "median_ms": round(1000 * statistics.median(times), 1),
                             "answer": answer[0]["results"][0][0]["answer"] if answer[0]["results"][0] else None})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def long_questions(data: Path, articles: range, context: str, count: int) -> list[tuple[str, list[str]]]:
    """Up to ``count`` questions (evenly spread) whose own paragraph lies wholly inside ``context``."""
    squad = json.loads(data.read_text())["data"]
    found = [(qa["question"], [a["text"] for a in qa["answers"]]) for a in articles for p in squad[a]["paragraphs"]
             if p["context"] in context for qa in p["qas"]]
    step = max(1, len(found) // max(1, count))
    return found[::step][:count]


def quality(server: Server, context: str, questions: list[tuple[str, list[str]]], stride: int,
            windows: list[int]) -> list[dict[str, Any]]:
    """Each question asked of the whole long context at every k: F1, agreement with k = all, latency."""
    from inference.squad_metric import best_over_golds, f1

    answers: dict[int, list[str]] = {k: [] for k in windows}
    times: dict[int, list[float]] = {k: [] for k in windows}
    for question, _ in questions:
        for k in windows:
            seconds, body = ask(server.url, server.name, context, stride, k, question)
            answers[k].append(body["results"][0][0]["answer"] if body["results"][0] else "")
            times[k].append(seconds)
    exact = answers[windows[0]]
    rows = []
    for k in windows:
        scores = [best_over_golds(f1, a, golds) for a, (_, golds) in zip(answers[k], questions, strict=True)]
        same = [a == b for a, b in zip(answers[k], exact, strict=True)]
        rows.append({"max_windows": k or None, "questions": len(questions),
                     "f1": round(100 * statistics.mean(scores), 1),
                     "same_answer_as_first": round(statistics.mean(same), 3),
                     "median_ms": round(1000 * statistics.median(times[k]), 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| backend | chars | doc_stride | max_windows | tokens | windows | median ms |",
             "|---|---|---|---|---|---|---|"]
    for backend, rows in results.items():
        lines += [f"| {backend} | {r['chars']:,} | {r['doc_stride']} | {r['max_windows'] or 'all'} | {r['tokens']} | "
                  f"{r['windows']} | {r['median_ms']:.0f} |" for r in rows]
    return "\n".join(lines)


def quality_table(results: dict[str, list[dict[str, Any]]], chars: int) -> str:
    lines = [f"| backend | max_windows | questions ({chars:,}-char context) | F1 | same answer as the first row | "
             "median ms |", "|---|---|---|---|---|---|"]
    for backend, rows in results.items():
        lines += [f"| {backend} | {r['max_windows'] or 'all'} | {r['questions']} | {r['f1']:.1f} | "
                  f"{r['same_answer_as_first']:.3f} | {r['median_ms']:.0f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a QA model folder with ONNX files")
    parser.add_argument("--backends", nargs="+", default=["onnx", "onnx-int8"])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "squad" /
                        "squad-v1.1-dev-articles-00-37.json")
    parser.add_argument("--strides", type=int, nargs="+", default=[128, 32], help="doc_stride values (tokens)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="characters per request")
    parser.add_argument("--max-windows", type=int, nargs="+", default=[0], help="max_windows values (0: all)")
    parser.add_argument("--questions", type=int, default=0, help="real questions asked of the longest context "
                        "at each max_windows (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=8951)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    text = long_context(args.data, range(30, 38), max(args.lengths))
    longest = text[: max(args.lengths) - len(QUESTION)]
    questions = long_questions(args.data, range(30, 38), longest, args.questions) if args.questions else []
    results: dict[str, list[dict[str, Any]]] = {}
    scored: dict[str, list[dict[str, Any]]] = {}
    for backend in args.backends:
        with Server(args.model_dir, backend, args.port, {"DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000"}) as server:
            results[backend] = sweep(server, text, args.lengths, args.strides, args.max_windows, args.repeats)
            if questions:
                scored[backend] = quality(server, longest, questions, min(args.strides), args.max_windows)
    print(table(results))
    if scored:
        print(quality_table(scored, max(args.lengths)))
    for backend, rows in results.items():
        for k in args.max_windows:
            best = min((r for r in rows if r["chars"] == max(args.lengths) and r["max_windows"] == (k or None)),
                       key=lambda r: r["median_ms"])
            print(f"{backend}, max_windows {k or 'all'}: {max(args.lengths):,} characters in "
                  f"{best['median_ms']:.0f} ms at doc_stride {best['doc_stride']} (target <= 1000 ms): "
                  f"{'met' if best['median_ms'] <= 1000 else 'not met'}")
    if args.out:
        args.out.write_text(json.dumps({"latency": results, "quality": scored}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
