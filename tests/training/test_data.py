"""Bad input gives an error naming file, line and problem - or, with skip_bad, a counted skip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import DataError, load_labelled, split_articles, squad_examples

LABELS = ("negative", "positive")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_good_tsv_csv_jsonl_with_pairs(tmp_path: Path) -> None:
    tsv_file = write(tmp_path / "a.tsv", "sentence\tlabel\nfine film\t1\nawful \"bad\"\t0\n")
    tsv, record = load_labelled(tsv_file, labels=LABELS)
    assert [(e.text, e.label) for e in tsv] == [("fine film", 1), ('awful "bad"', 0)]
    assert record.rows == 2
    assert record.skipped == 0
    assert len(record.sha256) == 64
    csv_rows, _ = load_labelled(write(tmp_path / "b.csv", 'text,text_pair,label\n"a, b",c,positive\n'), labels=LABELS)
    assert (csv_rows[0].text, csv_rows[0].text_pair, csv_rows[0].label) == ("a, b", "c", 1)
    jsonl_file = write(tmp_path / "c.jsonl", '{"text": "x", "label": 1}\n\n{"text": "y", "label": "negative"}\n')
    jsonl, _ = load_labelled(jsonl_file, labels=LABELS)
    assert [e.label for e in jsonl] == [1, 0]


@pytest.mark.parametrize(("name", "content", "line", "problem"), [
    ("cols.tsv", "sentence\tlabel\nok\t1\ntoo\tmany\tcols\n", 3, "expected 2 columns"),
    ("label.tsv", "sentence\tlabel\nok\t1\nok\tmaybe\n", 3, "unknown label 'maybe'"),
    ("nolabel.csv", "text,label\nok,1\nok,\n", 3, "missing label"),
    ("nocol.tsv", "words\tlabel\nok\t1\n", 2, "missing text column"),
    ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": \n', 2, "not valid JSON"),
    ("empty.tsv", "", 1, "no usable rows"),
])
def test_errors_name_file_line_and_problem(tmp_path: Path, name: str, content: str, line: int, problem: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_labelled(path, labels=LABELS)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert problem in str(info.value)


def test_skip_bad_counts_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.tsv", "sentence\tlabel\ngood\t1\nbad\t7\nworse\n\nfine\t0\n")
    examples, record = load_labelled(path, labels=LABELS, skip_bad=True)
    assert [e.text for e in examples] == ["good", "fine"]
    assert record.skipped == 2
    assert record.to_dict()["skipped"] == 2


def squad(tmp_path: Path, start: int) -> Path:
    data = {"data": [{"title": "t", "paragraphs": [{"context": "penguins live in antarctica .", "qas": [
        {"id": "ok1", "question": "who?", "answers": [{"text": "penguins", "answer_start": 0}]},
        {"id": "bad1", "question": "where?", "answers": [{"text": "antarctica", "answer_start": start}]},
    ]}]}]}
    return write(tmp_path / "squad.json", json.dumps(data, indent=1))


def test_squad_answer_not_at_answer_start(tmp_path: Path) -> None:
    path = squad(tmp_path, start=3)
    bad_line = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if '"bad1"' in line)
    message = f"^{path}:{bad_line}: question bad1: answer 'antarctica' is not at answer_start=3"
    with pytest.raises(DataError, match=message):
        squad_examples(path)
    examples, skipped = squad_examples(path, skip_bad=True)
    assert [e.qid for e in examples] == ["ok1"]
    assert skipped == 1
    good, skipped = squad_examples(squad(tmp_path, start=17))
    assert len(good) == 2
    assert skipped == 0


def test_squad_not_squad_and_split_by_article(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not SQuAD format"):
        squad_examples(write(tmp_path / "x.json", "[1, 2]"))
    with pytest.raises(DataError, match=":1: empty file"):
        squad_examples(write(tmp_path / "e.json", ""))
    assert split_articles(38, 8) == (list(range(30)), list(range(30, 38)))
    with pytest.raises(ValueError, match="heldout must be between 1 and 2 articles, got 3"):
        split_articles(3, 3)
