"""Turning load runs into report rows and the Markdown report: quality from the manifests,
the student's speed relative to its teacher, and a note of the machine the numbers came from."""

from __future__ import annotations

import math
import os
import platform
from datetime import UTC, datetime

from benchmarks.loadgen import Run
from inference.modelfolder import quality_entries

# Which manifest quality figure to show first when a dataset reports several.
PREFERRED = ("accuracy", "f1", "exact_match", "spearman", "pearson", "mean_cosine")
NOT_QUALITY = {"rows", "skipped", "sequences", "seconds", "throughput_items_s", "throughput_tokens_s"}


def quality_of(entry: dict) -> tuple[str, float | None]:
    """(label, value) of the model's headline quality figure, or ("", None) without one.
    A dataset measured on the served backend wins over one measured on another backend, which
    the label then names in brackets (int8 quality can differ from fp32)."""
    evaluations = quality_entries(entry.get("quality") or {})
    evaluations.sort(key=lambda e: e[1] != entry.get("backend"))
    for dataset, measured_on, figures in evaluations:
        numbers = {k: v for k, v in figures.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_QUALITY}
        note = f" [{measured_on}]" if measured_on and measured_on != entry.get("backend") else ""
        for key in sorted(numbers, key=lambda k: PREFERRED.index(k) if k in PREFERRED else len(PREFERRED)):
            return f"{dataset} {key}{note}", float(numbers[key])
    return "", None


def teacher_run(run: Run, entries: list[dict], runs: list[Run]) -> Run | None:
    """The run of this student's teacher at the same task, backend and concurrency."""
    entry = entry_of(run, entries)
    named = entry.get("teacher")
    candidates = [r for r in runs if r.target.role == "teacher" and r.target.task == run.target.task
                  and r.target.backend == run.target.backend and r.concurrency == run.concurrency]
    by_name = [r for r in candidates if base_name(entry_of(r, entries)) == named]
    found = by_name or candidates
    return found[0] if found else None


def entry_of(run: Run, entries: list[dict]) -> dict:
    return next(e for e in entries if (e.get("id") or e["name"]) == run.target.model
                and e["backend"] == run.target.backend)


def base_name(entry: dict) -> str:
    """The model's folder name: the service serves a second backend as `name@backend`."""
    return entry["name"].partition("@")[0]


def ratio(a: float, b: float) -> float | None:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else None


def row_of(run: Run, entries: list[dict], runs: list[Run]) -> dict:
    """One report row; speedup = student throughput ÷ its teacher's, at equal concurrency."""
    entry = entry_of(run, entries)
    label, value = quality_of(entry)
    teacher = teacher_run(run, entries, runs) if run.target.role == "student" else None
    return {
        "model": base_name(entry), "role": run.target.role, "backend": run.target.backend,
        "task": run.target.task, "concurrency": run.concurrency,
        "p50_ms": run.percentile(50), "p95_ms": run.percentile(95), "p99_ms": run.percentile(99),
        "throughput": run.throughput, "ok": len(run.latencies_ms), "errors": run.errors,
        "quality_label": label, "quality": value, "layers": entry.get("layers"), "params": entry.get("params"),
        "speedup": ratio(run.throughput, teacher.throughput) if teacher else None,
        "p50_ratio": ratio(run.percentile(50), teacher.percentile(50)) if teacher else None,
    }


def machine_description() -> str:
    """CPU model and count, so a reader knows what the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def fmt(value: float | None, spec: str, none: str = "—") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(rows: list[dict]) -> list[str]:
    head = ("| model | role | backend | task | conc. | p50 ms | p95 ms | p99 ms | req/s | errors "
            "| quality (manifest) | student ÷ teacher req/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        quality = f"{r['quality_label']} {fmt(r['quality'], '.3f')}" if r["quality_label"] else "—"
        lines.append(
            f"| {r['model']} | {r['role']} | {r['backend']} | {r['task']} | {r['concurrency']} "
            f"| {fmt(r['p50_ms'], '.2f')} | {fmt(r['p95_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} "
            f"| {fmt(r['throughput'], '.1f')} | {r['errors']} | {quality} | {fmt(r['speedup'], '.2f')}× |"
            .replace("| —× |", "| — |"))
    return lines


def summary(rows: list[dict]) -> list[str]:
    """One sentence per student at the highest concurrency measured."""
    top = max(r["concurrency"] for r in rows)
    lines = []
    for s in (r for r in rows if r["role"] == "student" and r["concurrency"] == top and r["speedup"]):
        lines.append(
            f"- **{s['task']}, {s['backend']}**: {s['model']} serves {s['speedup']:.2f}× its teacher's "
            f"requests/s at {top} concurrent clients (p50 {s['p50_ms']:.1f} ms, "
            f"{fmt(s['p50_ratio'], '.2f')}× the teacher's p50); quality: "
            f"{s['quality_label'] or 'not in manifest'} {fmt(s['quality'], '.3f', '')}.")
    return lines or ["- no student/teacher pair was served on the same task and backend."]


def render_markdown(rows: list[dict], meta: dict, plots: list[str]) -> str:
    """The whole report.md."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# distilserve: teacher vs student", "",
        f"Measured {when} against {meta['url']} on {meta['machine']}. Closed-loop load from the same "
        f"machine (the client shares the CPUs with the service): at each concurrency, up to "
        f"{meta['requests']} requests or {meta['max_seconds']:g} s per model, after 2 warm-up requests. "
        "Latency is client-side, over HTTP on the loopback interface; quality figures are the ones "
        "recorded in each model's manifest.", "",
        "## Summary", "", *summary(rows), "",
        "## All runs", "", *table(rows), "",
        "## Plots", "", *[f"![{p}]({p})" for p in plots], "",
    ]
    return "\n".join(parts)
