"""The report's PNG plots: latency percentiles and throughput against concurrency, and quality
against speed, one panel per task. Teacher and student keep one colour each everywhere
(backends differ by line style), so the eye can follow a role from plot to plot."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

ROLE_COLOR = {"teacher": "tab:orange", "student": "tab:blue"}
BACKEND_STYLE = {"onnx": ("-", "o"), "onnx-int8": ("--", "s"), "torch": (":", "^")}


def series(rows: list[dict], task: str) -> dict[tuple[str, str, str], list[dict]]:
    """Rows of one task grouped by (role, model, backend), sorted by concurrency."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["task"] == task:
            groups[(r["role"], r["model"], r["backend"])].append(r)
    order = sorted(groups, key=lambda k: (k[0] != "teacher", k[1], list(BACKEND_STYLE).index(k[2])
                                          if k[2] in BACKEND_STYLE else len(BACKEND_STYLE)))
    return {k: sorted(groups[k], key=lambda r: r["concurrency"]) for k in order}


def style(role: str, backend: str) -> dict:
    line, marker = BACKEND_STYLE.get(backend, ("-.", "x"))
    return {"color": ROLE_COLOR.get(role, "tab:gray"), "linestyle": line, "marker": marker, "linewidth": 1.8}


def concurrency_axis(ax: plt.Axes, levels: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.minorticks_off()
    ax.set_xlabel("concurrent clients")
    ax.grid(True, alpha=0.3)


def log_axis(ax: plt.Axes) -> None:
    """Log scale with plain numbers (1, 2, 5, 10, 20 ...) instead of powers-of-ten notation."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def grid(n_rows: int, tasks: list[str], height: float) -> tuple[plt.Figure, np.ndarray]:
    """A figure with `n_rows` x one column per task, and its axes as a 2-D array [row][col]."""
    fig, axes = plt.subplots(n_rows, len(tasks), figsize=(5.2 * len(tasks), height * n_rows), squeeze=False)
    return fig, axes


def latency_plot(rows: list[dict], tasks: list[str], levels: list[int], path: Path) -> None:
    fig, axes = grid(3, tasks, 3.4)
    for col, task in enumerate(tasks):
        for row, pct in enumerate(("p50", "p95", "p99")):
            ax = axes[row][col]
            for (role, model, backend), pts in series(rows, task).items():
                ax.plot([p["concurrency"] for p in pts], [p[f"{pct}_ms"] for p in pts],
                        label=f"{model} ({backend})", **style(role, backend))
            concurrency_axis(ax, levels)
            log_axis(ax)
            ax.set_ylabel(f"{pct} latency, ms")
            ax.set_title(f"{task}: {pct}")
            ax.legend(fontsize=8)
    fig.suptitle("Latency percentiles (client side) against concurrency", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_plot(rows: list[dict], tasks: list[str], levels: list[int], path: Path) -> None:
    fig, axes = grid(1, tasks, 4.2)
    for col, task in enumerate(tasks):
        ax = axes[0][col]
        for (role, model, backend), pts in series(rows, task).items():
            ax.plot([p["concurrency"] for p in pts], [p["throughput"] for p in pts],
                    label=f"{model} ({backend})", **style(role, backend))
        concurrency_axis(ax, levels)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("requests / s")
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against concurrency", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quality_plot(rows: list[dict], tasks: list[str], path: Path) -> None:
    """Quality (from the manifest) against each model's peak throughput over the concurrencies."""
    fig, axes = grid(1, tasks, 4.2)
    for col, task in enumerate(tasks):
        ax = axes[0][col]
        peaks = [max(pts, key=lambda r: r["throughput"]) for pts in series(rows, task).values()]
        points = [r for r in peaks if r["quality"] is not None]
        for r in points:
            st = style(r["role"], r["backend"])
            ax.scatter(r["throughput"], r["quality"], color=st["color"], marker=st["marker"], s=80,
                       zorder=3, alpha=0.85, label=f"{r['model']} ({r['backend']}), c={r['concurrency']}")
        if points:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no quality figures\nin the manifests", ha="center", va="center",
                    transform=ax.transAxes, fontsize=11, color="gray")
        ax.set_xlabel("peak requests / s (best concurrency)")
        ax.set_ylabel(points[0]["quality_label"] if points else "quality")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.25, y=0.25)
    fig.suptitle("Quality (manifest) against speed: up and right is better", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(rows: list[dict], out: Path) -> list[str]:
    """Write the three PNGs into `out`; return their file names (relative, for report.md)."""
    tasks = sorted({r["task"] for r in rows})
    levels = sorted({r["concurrency"] for r in rows})
    latency_plot(rows, tasks, levels, out / "latency.png")
    throughput_plot(rows, tasks, levels, out / "throughput.png")
    quality_plot(rows, tasks, out / "quality_vs_speed.png")
    return ["latency.png", "throughput.png", "quality_vs_speed.png"]
