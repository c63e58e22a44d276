"""`curve`: quality against training minutes, from the snapshots a training loop kept.

Where a recipe falls short of its target, the question is what more time would buy. Each loop
keeps its trained parameters at 1/n, 2/n ... of its steps (`training.checkpoint`, in the cache:
``curves/<model>/``); this command rebuilds each point's model (the saved model with those
parameters put back: the frozen ones never changed), evaluates it on a report set with the
torch backend and writes ``manifest["curve"]``: the slope at the end is the answer. Minutes are
the loop's; the one-off passes (tokenising, frozen layers) come on top, once.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from training.cli import add_command


def point_model(model_dir: Path, weights: dict[str, Any], params: dict[str, Any], into: Path) -> Path:
    """A copy of ``model_dir`` (config, tokenizer, manifest) whose ``weights`` carry ``params``."""
    from safetensors.torch import save_file

    unknown = sorted(set(params) - set(weights))
    if unknown:
        raise ValueError(f"{model_dir}: the curve snapshot trains parameters the model lacks: {unknown[:3]}")
    for path in model_dir.iterdir():
        if path.is_file() and path.suffix != ".onnx" and path.name != "model.safetensors":
            shutil.copy2(path, into / path.name)
    save_file({**weights, **{k: v.contiguous() for k, v in params.items()}}, into / "model.safetensors",
              metadata={"format": "pt"})
    return into


def measure_curve(model_dir: Path, data: Path | str, *, limit: int | None = None, articles: list[int] | None = None,
                  threads: int | None = None) -> dict[str, Any]:
    """Evaluate every kept snapshot of ``model_dir`` and the model itself; record the curve."""
    import torch
    from safetensors.torch import load_file

    from training.checkpoint import curve_folder
    from training.evaluate import evaluate_model
    from training.manifest import read_manifest, update_manifest

    model_dir = Path(model_dir)
    training = read_manifest(model_dir, required=True).get("training") or {}
    snapshots = sorted(curve_folder(model_dir.name).glob("*-step-*.pt"))
    if not snapshots:
        raise FileNotFoundError(f"no curve snapshots of {model_dir.name} in {curve_folder(model_dir.name)}: "
                                "they are kept while it trains (DISTILSERVE_CURVE_POINTS)")
    weights = load_file(model_dir / "model.safetensors")  # read once: each point replaces only the trained ones
    points = []
    for path in snapshots:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            point = point_model(model_dir, weights, stored["params"], Path(tmp))
            result = evaluate_model(point, "torch", data, limit=limit, articles=articles, threads=threads, write=False)
        points.append(_point(stored["step"], stored["seconds"], result))
    final = evaluate_model(model_dir, "torch", data, limit=limit, articles=articles, threads=threads, write=False)
    points.append(_point(training.get("steps", 0), training.get("seconds", 0.0), final))
    curve = {"set": final["set"], "metric": points[-1]["metric"], "backend": "torch", "rows": final["rows"],
             "points": points}
    update_manifest(model_dir, curve=curve)
    return curve


def _point(step: int, seconds: float, result: dict[str, Any]) -> dict[str, Any]:
    metric, interval = next(iter(result["interval"].items()))
    return {"step": step, "minutes": round(seconds / 60, 1), "metric": metric, "value": result[metric],
            "interval": interval}


def register(subparsers: argparse._SubParsersAction) -> None:
    """`python -m training curve`."""
    from training.evaluate import data_source

    parser = add_command(subparsers, "curve", "quality against training minutes, from the snapshots its training "
                         "kept; into the manifest's curve",
                         "python -m training curve models/squad-standard-teacher "
                         "--data ../shared/data/squad/squad-v1.1-dev-articles-00-37.json --articles 30:38 --limit 300")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=data_source, required=True, help="the report set (as for evaluate)")
    parser.add_argument("--articles", help="SQuAD articles as a slice '30:38' or a list '1,4,9'")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows / questions at each point")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: runtime's)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from training.evaluate import parse_articles

    curve = measure_curve(args.model_dir, args.data, limit=args.limit, articles=parse_articles(args.articles),
                          threads=args.threads)
    print(f"{'step':>8} {'loop min':>9} {curve['metric']:>10}  95% interval   ({curve['set']}, {curve['rows']} rows)")
    for p in curve["points"]:
        low, high = p["interval"].get("low"), p["interval"].get("high")
        print(f"{p['step']:>8} {p['minutes']:>9} {p['value']:>10.4f}  [{low:.4f}, {high:.4f}]")
    print(json.dumps({"curve": curve["set"], "points": len(curve["points"])}))
    return 0
