"""The confidence cascade against its teacher and student alone: quality and server CPU per item.

One server over the models folder; each of teacher, student and cascade answers the whole report
set (SST-2 dev for the sentiment pair, SQuAD articles 30-37 for the QA pair) in requests of
`--batch` items, one request at a time. CPU per item is the server process's CPU time
(/proc/<pid>/stat, user + system) over the run divided by the items, so the cascade's cost
includes the student's pass, the teacher's escalations and the HTTP work. The threshold curve is
computed from the same run's per-item answers: escalating every item under a threshold costs the
student's CPU per item plus the escalated share of the teacher's.

    python -m benchmarks.bench_cascade --pair sst2-quick --task classification
    python -m benchmarks.bench_cascade --pair squad-quick --task qa --limit 400

Target (issue 13): cascade quality >= teacher - 0.3 pt at <= 65% of the teacher's CPU per item.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import ROOT, UvicornServer, cpu_seconds
from inference.cascade import confidence, sweep
from inference.squad_metric import best_over_golds, f1
from training.data import load_labelled, squad_examples
from training.paths import data_dir, models_dir

TOLERANCE_PT, COST_TARGET = 0.3, 0.65


def items_for(task: str, limit: int | None) -> tuple[list[dict[str, Any]], list[Any]]:
    """Request items and golds of the report set (never trained or calibrated on)."""
    if task == "classification":
        examples, _ = load_labelled(data_dir() / "sst2" / "dev.tsv", labels=("negative", "positive"), split="eval")
        examples = examples[:limit] if limit else examples
        return [{"text": e.text} for e in examples], [("negative", "positive")[int(e.label or 0)] for e in examples]
    path = data_dir() / "squad" / "squad-v1.1-dev-articles-00-37.json"
    questions, _ = squad_examples(path, list(range(30, 38)))
    questions = questions[:limit] if limit else questions
    return [{"question": q.question, "context": q.context} for q in questions], [q.answers for q in questions]


def score(task: str, result: list[dict[str, Any]], gold: Any) -> float:
    """1/0 for a label, SQuAD F1 (0-1) for an answer."""
    if task == "classification":
        return float(result[0]["label"] == gold)
    return best_over_golds(f1, result[0]["answer"] if result else "", gold)


def run_model(client: httpx.Client, pid: int, task: str, model: str, items: list[dict[str, Any]], batch: int,
              extra: dict[str, Any]) -> dict[str, Any]:
    """Every item through one model (or the cascade); the answers and the server CPU per item."""
    path = "/classify" if task == "classification" else "/qa"
    results: list[Any] = []
    meta: list[dict[str, Any]] = []
    cpu0 = cpu_seconds(pid)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        inputs = [i["text"] for i in chunk] if task == "classification" else chunk
        response = client.post(path, json={"inputs": inputs, "model": model, **extra})
        response.raise_for_status()
        body = response.json()
        results += body["results"]
        meta += body["items"]
    return {"results": results, "items": meta, "cpu_per_item": (cpu_seconds(pid) - cpu0) / len(items)}


def curve(task: str, kind: str, student: dict[str, Any], teacher: dict[str, Any], golds: Sequence[Any]
          ) -> list[dict[str, float]]:
    """Quality and CPU per item of a cascade at every threshold, from the alone runs' answers."""
    conf = [confidence(kind, r) for r in student["all_labels"]] if task == "classification" else [
        float(r[0]["score"]) if r else 0.0 for r in student["results"]]
    s = [score(task, r, g) for r, g in zip(student["results"], golds, strict=True)]
    t = [score(task, r, g) for r, g in zip(teacher["results"], golds, strict=True)]
    return [{"threshold": th, "escalation": esc, "quality": 100 * q,
             "cpu_per_item": student["cpu_per_item"] + esc * teacher["cpu_per_item"]}
            for th, esc, q in sweep(conf, s, t)]


def plot(points: list[dict[str, float]], rows: dict[str, dict[str, float]], path: Path, title: str) -> None:
    from benchmarks.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    teacher_cpu = rows["teacher"]["cpu_per_item"]
    ax.plot([p["cpu_per_item"] / teacher_cpu for p in points], [p["quality"] for p in points], "-", color="tab:gray",
            label="cascade over thresholds (from the alone runs)")
    for name, color in (("teacher", "tab:orange"), ("student", "tab:blue"), ("cascade", "tab:green")):
        ax.scatter(rows[name]["cpu_per_item"] / teacher_cpu, rows[name]["quality"], color=color, s=60, zorder=3,
                   label=f"{name} (measured)")
    ax.axhline(rows["teacher"]["quality"] - TOLERANCE_PT, color="tab:orange", ls=":", lw=1, label="teacher - 0.3 pt")
    ax.axvline(COST_TARGET, color="tab:red", ls=":", lw=1, label="65% of the teacher's CPU")
    ax.set_xlabel("server CPU per item / teacher's")
    ax.set_ylabel("accuracy %" if "sst2" in title or "classification" in title else "F1")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", required=True, help="a calibrated pair, e.g. sst2-quick (see GET /models)")
    parser.add_argument("--task", required=True, choices=("classification", "qa"))
    parser.add_argument("--models", type=Path, default=models_dir())
    parser.add_argument("--backend", default="onnx", choices=("onnx", "onnx-int8"))
    parser.add_argument("--limit", type=int, help="first N items of the report set")
    parser.add_argument("--batch", type=int, default=16, help="items per request")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--out", type=Path, default=ROOT / "reports", help="folder for the PNG and JSON")
    args = parser.parse_args(argv)
    items, golds = items_for(args.task, args.limit)
    env = {**os.environ, "DISTILSERVE_MODELS_DIR": str(args.models), "DISTILSERVE_BACKENDS": json.dumps([args.backend]),
           "DISTILSERVE_ACCESS_LOG": "false", "DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000"}
    with UvicornServer("app.main:app", args.port, env=env) as server, httpx.Client(base_url=server.url,
                                                                                     timeout=600) as client:
        cascades = {c["pair"]: c for c in client.get("/models").json()["cascades"]}
        if args.pair not in cascades:
            parser.error(f"pair {args.pair!r} has no served cascade (calibrate it first); served: {sorted(cascades)}")
        runs = {name: run_model(client, server.pid, args.task, f"{args.pair}:{name}", items, args.batch, {})
                for name in ("teacher", "student", "cascade")}
        if args.task == "classification":  # every label's score, for the margin confidence
            runs["student"]["all_labels"] = run_model(client, server.pid, args.task, f"{args.pair}:student", items,
                                                      args.batch, {"top_k": None})["results"]
    rows = {name: {"quality": 100 * sum(score(args.task, r, g) for r, g in zip(run["results"], golds, strict=True))
                   / len(golds), "cpu_per_item": run["cpu_per_item"]} for name, run in runs.items()}
    escalated = sum(1 for i in runs["cascade"]["items"] if i.get("answered_by") == "teacher")
    points = curve(args.task, cascades[args.pair]["confidence"], runs["student"], runs["teacher"], golds)
    return report(args, rows, escalated / len(items), cascades[args.pair], points)


def report(args: argparse.Namespace, rows: dict[str, dict[str, float]], escalation: float, cascade: dict[str, Any],
           points: list[dict[str, float]]) -> int:
    teacher = rows["teacher"]
    figure = "accuracy %" if args.task == "classification" else "F1"
    print(f"{args.pair} ({args.task}, {args.backend}), threshold {cascade['threshold']:.4g} on "
          f"{cascade['confidence']} ({cascade['threshold_source']}):")
    print(f"| model | {figure} | server CPU ms / item | CPU / teacher's |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['quality']:.2f} | {1000 * row['cpu_per_item']:.2f} | "
              f"{row['cpu_per_item'] / teacher['cpu_per_item']:.2f} |")
    quality_gap = rows["cascade"]["quality"] - teacher["quality"]
    cost = rows["cascade"]["cpu_per_item"] / teacher["cpu_per_item"]
    ok = quality_gap >= -TOLERANCE_PT and cost <= COST_TARGET
    print(f"cascade escalated {100 * escalation:.1f}% of items; quality {quality_gap:+.2f} pt vs the teacher "
          f"(target >= -{TOLERANCE_PT}), CPU {cost:.2f}x the teacher's (target <= {COST_TARGET}): "
          f"{'PASS' if ok else 'FAIL'}")
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"cascade-{args.pair}.png"
    plot(points, rows, png, f"{args.pair}: cascade quality against cost")
    (args.out / f"cascade-{args.pair}.json").write_text(json.dumps({"rows": rows, "curve": points}, indent=1))
    print(f"curve: {png}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
