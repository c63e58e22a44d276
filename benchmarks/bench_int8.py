"""int8 schemes on one classification model, measured on this machine: speed against fp32 and
label agreement with fp32 on a labelled set (the evaluation set, not the export's parity texts).

  python -m benchmarks.bench_int8 --model-dir models/sst2-quick-student --data ../shared/data/sst2/dev.tsv

Why: which int8 scheme is fastest depends on the CPU. On an AVX2 machine without VNNI the
block-wise MatMulNBits file that `auto` ships ran at 0.60x fp32, while ONNX Runtime's dynamic
QOperator MatMuls ran at 1.5-1.8x; per-channel s8 weights there saturate the u8 x s8 products
(agreement 0.54) unless `reduce_range` is set. This prints every scheme side by side, so the
`auto` chain (training/int8.py) can be ordered by what the machine measures.

Schemes: the folder's own `model.int8.onnx` (as shipped), and ONNX Runtime dynamic quantisation
of the MatMuls (per-tensor; per-channel with and without reduce_range; per-channel with the FFN
down-projections left fp32). Heads (Gemm) stay fp32 in all of them. Speed: median of timed
calls at one batch of the set's first rows; every ratio is measured in this one run.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer

Scheme = Callable[[Path, Path], None]


def _dynamic(per_channel: bool, reduce_range: bool = False, keep: str | None = None) -> Scheme:
    """A dynamic-quantisation scheme; `keep`: MatMul names ending so stay fp32."""
    def make(src: Path, dst: Path) -> None:
        names = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "MatMul"]
        quantize_dynamic(src, dst, per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=[n for n in names if keep and n.endswith(keep)])
    return make


SCHEMES: dict[str, Scheme] = {
    "dynamic per-tensor": _dynamic(False),
    "dynamic per-channel": _dynamic(True),
    "dynamic per-channel reduce_range": _dynamic(True, True),
    "dynamic per-channel reduce_range, FFN-down fp32": _dynamic(True, True, "output/dense/MatMul"),
}


def read_texts(path: Path, column: str, limit: int | None) -> list[str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    return [r[column] for r in rows[:limit]]


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(tokenizer: Tokenizer, sess: ort.InferenceSession, texts: list[str]) -> dict[str, np.ndarray]:
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
    if "token_type_ids" in {i.name for i in sess.get_inputs()}:
        feed["token_type_ids"] = np.zeros_like(ids)
    return feed


def labels(tokenizer: Tokenizer, sess: ort.InferenceSession, texts: list[str], batch: int) -> np.ndarray:
    chunks = [sess.run(None, feeds(tokenizer, sess, texts[i : i + batch]))[0] for i in range(0, len(texts), batch)]
    return np.concatenate(chunks).argmax(-1)


def items_per_s(tokenizer: Tokenizer, sess: ort.InferenceSession, texts: list[str], repeats: int) -> float:
    feed = feeds(tokenizer, sess, texts)
    sess.run(None, feed)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times)


def measure(path: Path, args: argparse.Namespace, tokenizer: Tokenizer, texts: list[str]) -> dict[str, Any]:
    sess = session(path, args.threads)
    return {"speed": items_per_s(tokenizer, sess, texts[: args.batch], args.repeats),
            "labels": labels(tokenizer, sess, texts, args.batch), "mb": path.stat().st_size / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a classification folder with model.onnx")
    parser.add_argument("--data", type=Path, required=True, help="labelled TSV/CSV whose text column is measured")
    parser.add_argument("--column", default="sentence", help="text column (default: sentence)")
    parser.add_argument("--limit", type=int, default=None, help="rows of --data (default: all)")
    parser.add_argument("--batch", type=int, default=32, help="items per call")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per scheme (median)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)
    tokenizer = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(128)
    tokenizer.enable_padding()
    texts = read_texts(args.data, args.column, args.limit)
    base = measure(args.model_dir / "model.onnx", args, tokenizer, texts)
    print(f"{args.model_dir.name}: {len(texts)} rows of {args.data.name}, batch {args.batch}, {args.threads} threads")
    print(f"  {'scheme':50s} {'items/s':>8s} {'vs fp32':>8s} {'agreement':>10s} {'MB':>6s}")
    row = "  {:50s} {:8.1f} {:7.2f}x {:10.4f} {:6.0f}"
    print(row.format("fp32", base["speed"], 1.0, 1.0, base["mb"]))
    shipped = args.model_dir / "model.int8.onnx"
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        paths = {"shipped model.int8.onnx": shipped} if shipped.is_file() else {}
        for name, make in SCHEMES.items():
            paths[name] = Path(tmp) / f"{len(paths)}.onnx"
            make(args.model_dir / "model.onnx", paths[name])
        for name, path in paths.items():
            got = measure(path, args, tokenizer, texts)
            agreement = float(np.mean(got["labels"] == base["labels"]))
            print(row.format(name, got["speed"], got["speed"] / base["speed"], agreement, got["mb"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
