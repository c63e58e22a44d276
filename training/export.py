"""Export a model folder to ONNX (fp32 `model.onnx`, int8 `model.int8.onnx`) with parity checks.

The int8 schemes are in `training.int8`; with the default `auto`, every scheme of `AUTO_CHAIN`
is built and timed against fp32 on this machine (`training.int8_speed`), and the fastest as
served (with its guard, for classification and QA) whose file passes parity is kept
(`training.int8_choice`).
`python -m training export MODEL --compare-schemes` (training/int8_compare.py, which adds that
flag to this command) measures every scheme on a model instead of exporting it.

Every written file is checked against torch through the serving code (`training.parity`); a
breach removes the file, records the figures in the manifest and raises `ExportParityError`.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import onnx
import torch
from transformers import PreTrainedModel

from inference.backends import OUTPUT_NAMES, load_backend
from inference.modelfolder import read_spec
from training.graph_opt import AT_LOAD
from training.int8 import AUTO_CHAIN, DEFAULT_SCHEME, SCHEMES, export_int8, require_calibration
from training.int8_choice import FP32_FILE, INT8_FILE, Quantise, choose_int8
from training.int8_speed import calibration_batches, shape_key
from training.manifest import describe, read_manifest, versions, write_manifest
from training.modeling import position_limit
from training.parity import (
    PARITY_TEXTS,
    TOLERANCES,
    ExportParityError,
    Outputs,
    ParitySet,
    breaches,
    compare,
    own_items,
    prefix,
    tolerance_of,
)

log = logging.getLogger(__name__)

OPSET = 17
SUPPORT_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "merges.txt", "vocab.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "1_Pooling",
)
__all__ = ["export_model", "ExportParityError", "register"]


# --- fp32 export ---------------------------------------------------------------------------

class _Graph(torch.nn.Module):
    """Positional inputs -> the contract's outputs (a tuple, in `OUTPUT_NAMES[task]` order)."""

    def __init__(self, model: PreTrainedModel, task: str, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.task, self.input_names = model, task, input_names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.input_names, tensors, strict=False)), return_dict=True)
        return tuple(out[name] for name in OUTPUT_NAMES[self.task])


def load_torch_model(model_dir: Path, task: str) -> PreTrainedModel:
    """The HF model for `task` with eager attention: the plain MatMul/Softmax graph that ORT's
    optimiser fuses, instead of an SDPA decomposition."""
    from training.modeling import TASK_CLASSES

    return TASK_CLASSES[task].from_pretrained(str(model_dir), attn_implementation="eager").eval()


def graph_inputs(model: PreTrainedModel) -> tuple[str, ...]:
    """input_ids, attention_mask, and token_type_ids only where the architecture uses it."""
    from training.modeling import _takes_token_types

    return ("input_ids", "attention_mask") + (("token_type_ids",) if _takes_token_types(model) else ())


def export_fp32(model: PreTrainedModel, task: str, path: Path) -> None:
    """TorchScript exporter (`dynamo=False`): for these encoders it gives a compact graph with
    stable node names (used to pick MatMuls for int8) that ORT fuses; dynamo adds nothing here."""
    names = graph_inputs(model)
    dummy = tuple(torch.ones(2, 9, dtype=torch.long) for _ in names)  # ids=1: valid in any vocab
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({n: {0: "batch", 1: "sequence"} if task != "classification" else {0: "batch"}
                 for n in OUTPUT_NAMES[task]})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Graph(model, task, names), dummy, str(path), input_names=list(names),
                          output_names=list(OUTPUT_NAMES[task]), dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(str(path))


# --- parity + manifest ---------------------------------------------------------------------

def check_file(out_dir: Path, file: str, precision: str, spec: Any, reference: Outputs, got: Outputs,
               tolerance: dict[str, float]) -> tuple[dict, list[tuple[str, float, float]]]:
    """Compare `file`'s outputs (`got`, run through the ONNX serving backend) with `reference`:
    the manifest entry and the tolerances it breaches."""
    figures = compare(spec.task, reference, got)
    bad = breaches(figures, tolerance)
    entry = {"precision": precision, "parity": {**figures, "ok": not bad}, "tolerance": tolerance,
             "opset": OPSET, "exporter": "torch.onnx (TorchScript, dynamo=False)",
             "size_bytes": (out_dir / file).stat().st_size}
    log.info("%s parity: %s", file, json.dumps(entry["parity"]))
    return entry, bad


def plain_manifest(model_dir: Path, out_dir: Path, task: str, model: PreTrainedModel) -> dict:
    """A manifest for a plain HF folder (no training record): what the service needs, and
    where the weights came from."""
    spec = read_spec(model_dir)
    extra = {"pooling": spec.pooling, "normalize": spec.normalize} if task == "embedding" else {}
    return describe(model, name=out_dir.name, task=task, role="model",  # a lone model: no pair, no teacher
                    source=str(model_dir), max_length=spec.max_length, **extra)


def copy_support_files(model_dir: Path, out_dir: Path) -> None:
    """Config and tokenizer files, so `out_dir` is a servable ONNX-only model folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SUPPORT_FILES:
        src = model_dir / name
        if src.is_dir():
            shutil.copytree(src, out_dir / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, out_dir / name)


def _prepare(model_dir: Path, out_dir: Path, task: str | None) -> tuple[dict, str]:
    """The manifest to update and the task: manifest first, else the flag, else config.json."""
    manifest = read_manifest(model_dir)
    task = manifest.get("task") or task or read_spec(model_dir).task
    if manifest.get("task") and task != manifest["task"]:
        raise ValueError(f"{model_dir}/manifest.json says task {manifest['task']!r}, not {task!r}")
    if out_dir != model_dir:
        copy_support_files(model_dir, out_dir)
    return manifest, task


def check_max_length(spec: Any, config: Any) -> None:
    """The served window must fit the position table, or the service fails on long inputs;
    say so at export rather than as an index error at request time."""
    limit = position_limit(config)
    if limit is not None and spec.max_length > limit:
        raise ValueError(f"{spec.path}: manifest max_length {spec.max_length} exceeds the {limit} positions "
                         f"{config.model_type} supports (max_position_embeddings={config.max_position_embeddings})")


def export_model(model_dir: Path, *, int8: bool = True, parity_texts: list[str] | None = None,
                 task: str | None = None, out_dir: Path | None = None, scheme: str = DEFAULT_SCHEME,
                 tolerances: dict[str, dict[str, float]] | None = None, fuse: bool = False,
                 measured: dict[str, Any] | None = None, calibration_texts: list[str] | None = None,
                 parity_qa: Sequence[tuple[str, str]] = (), guard: bool = True) -> dict:
    """Export `model_dir` to ONNX in `out_dir` (default: in place) and return the manifest.

    `task` is only needed for a plain HF folder whose config does not say it; `tolerances`
    overrides `TOLERANCES[precision][task]` per precision (used by tests and strict builds);
    `fuse` tries offline graph fusion (kept only where it is faster here, `training.graph_opt`); off
    by default: it never won where measured (0.93-0.99x on the AVX2 EPYC and the AMX Xeon: ONNX
    Runtime fuses LayerNormalization and BiasGelu at load), and trying it cost a build ~20 s.
    `measured`: a build's memo of speed decisions per model shape - what an earlier model of the
    same shape measured in this process (fusion kept or not, the int8 candidates' order) is reused
    instead of timed again (`None`: always measure). `calibration_texts`: what the static int8
    schemes fix their activation scales on (never the parity texts). `parity_texts` / `parity_qa`:
    what parity runs instead of the fixed set; unset, the int8 check also runs the model's own
    items (`own_items`): 24 generic texts alone let through int8 files that flipped 2.5% of a real
    set's labels and 19% of its QA spans (quick build, 2026-12-06). fp32 is checked against torch
    on the fixed set, int8 against the fp32 file on the fixed set and the own items, as served:
    with `guard`, a classification or QA int8 file is checked and chosen with the guard it will
    be served with (`training.int8_choice`), which the manifest records beside it. Raises
    `ExportParityError` (after recording the figures and removing the file) on a breach.
    """
    if int8:
        require_calibration(scheme, bool(calibration_texts))  # before any work is done
    model_dir, out_dir = Path(model_dir), Path(out_dir or model_dir)
    manifest, task = _prepare(model_dir, out_dir, task)
    model = load_torch_model(model_dir, task)
    manifest = manifest or plain_manifest(model_dir, out_dir, task, model)
    write_manifest(out_dir, manifest)  # read_spec below needs name/task/role
    spec = read_spec(out_dir)
    check_max_length(spec, model.config)
    fixed = ParitySet(tuple(parity_texts) if parity_texts is not None else None, tuple(parity_qa))
    own_texts, own_qa = own_items(manifest, task) if parity_texts is None and not parity_qa else ([], [])
    every = ParitySet((*(fixed.texts or PARITY_TEXTS), *own_texts), (*fixed.qa_pairs, *own_qa))
    reference = fixed.run(load_backend(model_dir, task, "torch"), spec)
    _drop_stale_int8(out_dir, manifest)
    export_fp32(model, task, out_dir / FP32_FILE)
    memo = {"model": out_dir.name} if measured is None else measured.setdefault(shape_key(model.config),
                                                                                {"model": out_dir.name})
    texts = list(every.texts or ())  # the speed decisions' batch: the first 16
    graph = _fuse(out_dir, model.config, spec, texts, memo) if fuse else {"offline": None, "at_load": AT_LOAD}
    fp32 = (every if int8 else fixed).run(load_backend(out_dir, task, "onnx"), spec)  # int8's reference too
    _check_and_record(out_dir, FP32_FILE, spec, reference, prefix(fp32, reference), manifest, scheme, tolerances,
                      extra={"graph": graph})
    if int8:  # only from an fp32 graph that passed
        batches = calibration_batches(out_dir, task, calibration_texts, spec.max_length) if calibration_texts else []
        quantise = partial(export_int8, config=model.config, calibration=batches)
        _export_int8_checked(out_dir, quantise, spec, (fp32, every), texts, manifest, scheme, tolerances, graph, memo,
                             guard)
    return manifest


def _fuse(out_dir: Path, config: Any, spec: Any, texts: list[str] | None, memo: dict[str, Any]) -> dict[str, Any]:
    """Offline fusion of model.onnx, kept where it is faster here (training.graph_opt); a decision
    in `memo` is applied without timing again."""
    from training.graph_opt import apply_decision, optimize_fp32

    if "fusion" in memo:
        return apply_decision(out_dir / FP32_FILE, config, memo["fusion"], memo["model"])
    memo["fusion"] = optimize_fp32(out_dir / FP32_FILE, config, spec.task, _bench_batch(out_dir, spec, texts))
    return memo["fusion"]


def _bench_batch(out_dir: Path, spec: Any, texts: list[str] | None) -> dict[str, Any]:
    """The batch every speed decision of the export is measured on: 16 of the parity texts."""
    from training.int8_speed import bench_inputs

    return bench_inputs(out_dir, spec.task, texts or list(PARITY_TEXTS), spec.max_length)


def _export_int8_checked(out_dir: Path, quantise: Quantise, spec: Any, parity: tuple[Outputs, ParitySet],
                         texts: list[str] | None, manifest: dict, scheme: str, tolerances: dict | None, graph: dict,
                         memo: dict, guard: bool) -> None:
    """Quantise with `scheme` (with `auto`, every scheme of `AUTO_CHAIN`), keep the candidate
    `training.int8_choice` chooses and record it, with every candidate's speed and the checks of
    the others. Raises the last candidate's breach when none passes."""
    names = AUTO_CHAIN if scheme == "auto" else (scheme,)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".int8-") as tmp:
        choice = choose_int8(out_dir, Path(tmp), quantise, spec, parity, partial(_bench_batch, out_dir, spec, texts),
                             names, tolerances, memo, guard)
    final = choice.kept or choice.checked[-1]
    record: dict[str, Any] = {"speed": choice.speeds[final.name],
                              "candidates": [{"scheme_name": n, **choice.speeds[n]} for n in choice.order],
                              "graph": {**graph, "quantised_from": FP32_FILE}}
    if final.guard:  # served with the guard chosen on the parity items until `guard` calibrates it
        record.update(guard=final.guard, parity_bare=final.bare)
    record["served_speedup"] = round(float(final.speed["fp32_ms"]) / final.cost_ms, 3)
    if choice.kept and record["served_speedup"] < 1:
        _warn_slower(out_dir.name, final.name, record["served_speedup"])
    tried = [c.summary() for c in choice.checked if c is not final]
    precision = "int8-guarded" if final.guard else "int8"
    _check_and_record(out_dir, INT8_FILE, spec, parity[0], final.answered, manifest, final.name,
                      {"int8": choice.tolerance}, tried, {**record, "checked_as": precision})


def _warn_slower(model: str, scheme: str, speedup: float) -> None:
    """Why: on a CPU without AVX-512 VNNI (the 2-core AVX2 EPYC, 2026-12-08) every scheme that kept
    parity on the SST-2 quick pair ran at 0.72-0.74x fp32: `onnx-int8` would cost speed for nothing."""
    log.warning("%s: no int8 scheme that keeps parity is faster than fp32 on this CPU (%s: %.2fx fp32 as served); "
                "serve it on onnx", model, scheme, speedup)


def _check_and_record(out_dir: Path, file: str, spec: Any, reference: Outputs, got: Outputs,
                      manifest: dict, scheme: str, tolerances: dict | None, tried: list[dict] | None = None,
                      extra: dict | None = None) -> None:
    """Check one file, write its manifest entry (with `extra` figures); on a breach remove the file
    and raise."""
    precision = "int8" if file == INT8_FILE else "fp32"
    tolerance = tolerance_of(precision, spec.task, tolerances)
    entry, bad = check_file(out_dir, file, precision, spec, reference, got, tolerance)
    entry["scheme"] = SCHEMES[scheme][1] if precision == "int8" else "fp32 (no quantisation)"
    if precision == "int8":
        entry["scheme_name"] = scheme
        if tried:
            entry["schemes_tried"] = list(tried)  # faster candidates that failed parity
    entry.update(extra or {})
    manifest.setdefault("onnx", {})[file] = entry
    manifest["versions"] = {**manifest.get("versions", {}), **versions()}
    write_manifest(out_dir, manifest)
    if bad:
        (out_dir / file).unlink(missing_ok=True)
        raise ExportParityError(file, *bad[0])


def _drop_stale_int8(out_dir: Path, manifest: dict) -> None:
    """An int8 file from an earlier export may be of other weights: never leave it to be served
    (it is rebuilt from this export's fp32 graph, or stays absent with --no-int8)."""
    if (out_dir / INT8_FILE).exists() or INT8_FILE in manifest.get("onnx", {}):
        log.info("removing %s from an earlier export", INT8_FILE)
        (out_dir / INT8_FILE).unlink(missing_ok=True)
        manifest.get("onnx", {}).pop(INT8_FILE, None)


# --- CLI -----------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    """`python -m training export`."""
    from training.cli import add_command

    parser = add_command(subparsers, "export", "Export a model folder to ONNX (fp32 + int8) with parity checks.",
                         "python -m training export models/sst2-quick-student\n"
                         "  python -m training export models/embed-quick-teacher --compare-schemes "
                         "--texts ../shared/data/stsb/dev.tsv\n"
                         "  python -m training export /path/to/all-MiniLM-L6-v2 --task embedding "
                         "--out models/minilm")
    parser.add_argument("model_dir", type=Path, help="model folder (manifest.json or a plain HF folder)")
    parser.add_argument("--task", choices=tuple(OUTPUT_NAMES), help="task of a plain HF folder")
    parser.add_argument("--out", type=Path, help="write the export here (default: in the model folder)")
    parser.add_argument("--no-int8", action="store_true", help="fp32 model.onnx only")
    parser.add_argument("--fuse", action="store_true", help="try offline graph fusion (ONNX Runtime's transformer "
                        "optimiser) and keep it where it is faster on this machine; off by default: it "
                        "measured 0.93-0.99x on every CPU tried")
    parser.add_argument("--int8-scheme", default=DEFAULT_SCHEME, choices=["auto", *sorted(SCHEMES)],
                        help=f"int8 quantisation scheme (default {DEFAULT_SCHEME}: of "
                             f"{', '.join(AUTO_CHAIN)}, timed here, the fastest as served that passes parity)")
    parser.add_argument("--no-int8-guard", dest="int8_guard", action="store_false",
                        help="check and choose classification/QA int8 files bare, as served with the "
                             "service's INT8_GUARD=false (default: with the guard they are served with, "
                             "their answers then held to int8-guarded tolerances)")
    parser.add_argument("--calibration", type=Path, metavar="FILE",
                        help="texts (TSV/CSV/JSONL) that set activation ranges: for the static schemes' scales "
                             "and smooth-dynamic's migration")
    parser.add_argument("--calibration-limit", type=int, default=256, help="with --calibration: how many texts")
    parser.add_argument("--tolerance", action="append", default=[], metavar="PRECISION.METRIC=VALUE",
                        help="override a parity tolerance, e.g. int8.mean_cosine=0.995 or "
                             "int8-guarded.span_agreement=0.99 (repeatable)")
    parser.set_defaults(func=_run)


def calibration_texts(args: argparse.Namespace, offset: int = 0) -> list[str] | None:
    """--calibration's texts from row `offset` on, or None."""
    from training.data import texts_of

    return texts_of(args.calibration, args.calibration_limit, offset) if args.calibration else None


def parse_tolerances(items: list[str], task: str) -> dict[str, dict[str, float]] | None:
    """['int8.mean_cosine=0.995'] -> {'int8': {...defaults for task, 'mean_cosine': 0.995}}."""
    out: dict[str, dict[str, float]] = {}
    for item in items:
        key, _, value = item.partition("=")
        precision, _, metric = key.partition(".")
        if precision not in TOLERANCES or not metric or not value:
            raise ValueError(f"bad --tolerance {item!r}; expected e.g. int8.mean_cosine=0.995")
        out.setdefault(precision, dict(TOLERANCES[precision][task]))[metric] = float(value)
    return out or None


def _run(args: argparse.Namespace) -> int:
    task = read_manifest(args.model_dir).get("task") or args.task or read_spec(args.model_dir).task
    try:
        manifest = export_model(args.model_dir, int8=not args.no_int8, task=args.task, out_dir=args.out,
                                scheme=args.int8_scheme, tolerances=parse_tolerances(args.tolerance, task),
                                fuse=args.fuse, calibration_texts=calibration_texts(args), guard=args.int8_guard)
    except ExportParityError as exc:
        log.error("export failed: %s", exc)
        return 1
    for file, entry in manifest["onnx"].items():
        print(f"{file}: {entry['precision']} parity {json.dumps(entry['parity'])}")
    return 0
