"""Evaluate a model folder on a data file through the SERVING code, and record it in its manifest.

The model runs through `inference.backends.load_backend` and the service's own task pipelines
(`inference.pipelines.make_pipeline`: tokenisation, windowing, pooling, span decoding), batched the way
the service batches (`inference.evaluation.serve`: sequences sorted by length), so an evaluated figure
is the served figure for that backend - torch, onnx or onnx-int8 alike.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from inference.backends import FP32_OF, KINDS, load_backend
from inference.evaluation import Served, serve
from inference.guard import Guard
from inference.modelfolder import ModelSpec, read_spec
from inference.pipelines import make_pipeline
from training.data import Columns, data_sha256, is_hub_spec, parse_hub_spec
from training.scoring import score_classification, score_squad, score_stsb

log = logging.getLogger(__name__)

DATASETS = ("classification", "squad", "stsb")
TASK_OF = {"classification": "classification", "squad": "qa", "stsb": "embedding"}


def _throughput(served: Served) -> dict[str, float]:
    return {"throughput_items_s": round(len(served.results) / served.seconds, 2),
            "sequences": served.sequences,
            "throughput_tokens_s": round(served.tokens / served.seconds, 1),
            "seconds": round(served.seconds, 2)}


# --- entry points --------------------------------------------------------------------------

def detect_dataset(path: Path | str, task: str) -> str:
    """squad for .json (SQuAD layout), stsb for an embedding model, else classification."""
    if not is_hub_spec(path) and Path(path).suffix.lower() == ".json":
        return "squad"
    return {"qa": "squad", "embedding": "stsb"}.get(task, "classification")


def parse_articles(text: str | None) -> list[int] | None:
    """'30:38' -> [30..37] (a Python slice); '3,5,7' -> [3, 5, 7]; None -> all articles."""
    if not text:
        return None
    if ":" in text:
        start, _, stop = text.partition(":")
        return list(range(int(start or 0), int(stop)))
    return [int(part) for part in text.split(",") if part.strip()]


def data_source(text: str) -> Path | str:
    """A --data value: a hub spec (hf:glue:sst2@validation) as is, else a file path."""
    return text if is_hub_spec(text) else Path(text)


def set_name_for(path: Path | str, dataset: str, articles: Sequence[int] | None) -> str:
    """'sst2-dev' from ../shared/data/sst2/dev.tsv; 'squad-articles-30-38' for a SQuAD subset;
    'glue-sst2-validation' from hf:glue:sst2@validation."""
    if is_hub_spec(path):
        name, config, split = parse_hub_spec(str(path))
        return "-".join(p for p in (Path(name).name, config, split) if p)
    path = Path(path)
    if dataset == "squad":
        return f"squad-articles-{articles[0]}-{articles[-1] + 1}" if articles else f"squad-{path.stem}"
    return f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem


def evaluate_model(model_dir: Path, backend: str, data_path: Path | str, *, dataset: str | None = None,
                   limit: int | None = None, articles: Sequence[int] | None = None, set_name: str | None = None,
                   batch_size: int = 32, threads: int | None = None, write: bool = True,
                   columns: Columns | None = None, guard: bool = True, openvino_group: int | None = None) -> dict:
    """Evaluate `model_dir` on `data_path` with `backend`; return the figures and (if the folder
    has a manifest and `write`) store them as manifest["quality"][set_name][backend], with the
    per-item records in `evaluations/<set>@<backend>.jsonl` beside it. `columns`: how a labelled
    file is read (default: its header names the columns). An int8 file with a calibrated guard
    is evaluated as it is served, near ties read again in fp32 (`guard=False`: the bare int8
    file). The result also carries each served item's raw output (`outputs`: vectors for
    embeddings), which is not stored. `openvino_group`: `openvino-int8`'s activation group
    (None: the recorded one, `inference.backends.load_backend`)."""
    model_dir, data_path = Path(model_dir), data_source(str(data_path))
    spec = read_spec(model_dir)
    dataset = dataset or detect_dataset(data_path, spec.task)
    if TASK_OF.get(dataset) != spec.task:
        raise ValueError(f"{model_dir.name} is a {spec.task} model; dataset {dataset!r} needs {TASK_OF.get(dataset)}")
    pipeline, pad = make_pipeline(spec)
    model = load_backend(model_dir, spec.task, backend, threads, openvino_group=openvino_group)
    checker = _guard(spec, backend, threads) if guard else None

    def run(items: list) -> Served:
        with tqdm(total=len(items), desc=f"{model_dir.name} [{backend}]", unit="item") as bar:
            return serve(pipeline, model, pad, items, batch_size, progress=bar.update, guard=checker)

    if dataset == "squad":
        scored = score_squad(spec, run, data_path, limit, articles)
    else:
        scored = (score_stsb if dataset == "stsb" else score_classification)(spec, run, data_path, limit, columns)
    name = set_name or set_name_for(data_path, dataset, articles)
    entry = {**scored.figures, "interval": {scored.headline: scored.interval().as_dict()},
             **_throughput(scored.served), "backend": backend, "rows": len(scored.records), "dataset": dataset,
             "data": {"path": str(data_path), "sha256": data_sha256(data_path)},
             **({"articles": [articles[0], articles[-1] + 1]} if articles else {}),
             **_guard_figures(checker, scored.records),
             "predictions": predictions_file(name, backend),
             "evaluated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if write:
        _record(model_dir, name, entry, scored.records)
    return {"set": name, **entry, "records": scored.records, "outputs": [r["result"] for r in scored.served.results]}


def _guard(spec: ModelSpec, backend: str, threads: int | None) -> Guard | None:
    """The int8 file's guard as the service builds it (`app.repository.loading`): its fp32 file
    and the calibrated threshold; None for other backends and files without one."""
    if (threshold := spec.int8_guard(backend)) is None:
        return None
    return Guard(load_backend(spec.path, spec.task, FP32_OF[backend], threads), threshold)


def _guard_figures(guard: Guard | None, records: list[dict[str, Any]]) -> dict[str, Any]:
    if guard is None:
        return {}
    again = sum(1 for r in records if r.get("rechecked"))
    return {"guard": {"threshold": guard.threshold, "rechecked": again,
                      "rechecked_share": round(again / max(1, len(records)), 6)}}


def predictions_file(set_name: str, backend: str) -> str:
    """Where an evaluation's per-item records live, relative to the model folder."""
    return f"evaluations/{set_name}@{backend}.jsonl"


def read_predictions(model_dir: Path, set_name: str, backend: str) -> list[dict[str, Any]]:
    """The per-item records `evaluate` stored for one set and backend."""
    path = Path(model_dir) / predictions_file(set_name, backend)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stored evaluation of {set_name} on {backend}; run `python -m "
                                f"training evaluate {model_dir} --backend {backend} --data ...` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record(model_dir: Path, name: str, entry: dict, records: list[dict[str, Any]]) -> None:
    """manifest["quality"][set][backend] = entry, and the per-item records beside it (each
    evaluation of a set on a backend replaces that one only)."""
    from training.manifest import read_manifest, write_manifest

    manifest = read_manifest(model_dir)
    if not manifest:
        log.warning("%s has no manifest.json: figures printed, not recorded", model_dir)
        return
    path = Path(model_dir) / entry["predictions"]
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    quality = manifest.setdefault("quality", {})
    if not isinstance(quality.get(name), dict) or "backend" in quality[name]:
        quality[name] = {}  # an entry of the older one-backend-per-set shape is replaced
    quality[name][entry["backend"]] = entry
    write_manifest(model_dir, manifest)


def register(subparsers: argparse._SubParsersAction) -> None:
    """`python -m training evaluate`."""
    from training.cli import add_command, add_data_options

    parser = add_command(subparsers, "evaluate", "Evaluate a model on a data file through the serving code; "
                         "figures go into its manifest.",
                         "python -m training evaluate models/sst2-quick-student --backend onnx "
                         "--data ../shared/data/sst2/dev.tsv\n"
                         "  python -m training evaluate models/squad-quick-student --backend onnx-int8 "
                         "--data ../shared/data/squad/squad-v1.1-dev-articles-00-37.json --articles 30:38")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--backend", default="torch", choices=KINDS)
    parser.add_argument("--data", type=data_source, required=True,
                        help="TSV/CSV/JSONL (text,label), STS-B TSV, SQuAD JSON, or a hub dataset "
                        "hf:<dataset>[:<config>][@<split>] (e.g. hf:glue:sst2@validation)")
    parser.add_argument("--dataset", choices=DATASETS, help="data kind (default: from the file and the model's task)")
    parser.add_argument("--articles", help="SQuAD articles as a slice '30:38' or a list '1,4,9'")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows / questions")
    parser.add_argument("--name", help="evaluation set name in the manifest (default e.g. sst2-dev)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: runtime's)")
    add_data_options(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Bad data (an unknown label: file, line and label) or a model/dataset mismatch: one
    `error: ...` line and exit status 2 (training.cli.main)."""
    from training.cli import columns_from_args

    result = evaluate_model(args.model_dir, args.backend, args.data, dataset=args.dataset, limit=args.limit,
                            articles=parse_articles(args.articles), set_name=args.name,
                            batch_size=args.batch_size, threads=args.threads, columns=columns_from_args(args))
    print(json.dumps({k: v for k, v in result.items() if k not in ("records", "outputs")}, indent=2))
    return 0
