"""A user's own data: `python -m training build` from a header-less 6-class CSV to a served pair
(tiny base, tiny recipe), column options on a TSV, and one-line errors naming file, line and label."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from app.settings import Settings
from tests.conftest import serve
from tests.training.conftest import FILLER
from tests.training.test_cli import cli, manifest
from training.data import label_values, load_labelled
from training.train import inferred_labels

# six classes, each with its own words (all in the tiny tokenizer's vocabulary): a tiny model learns them
CLASSES = {
    "animals": ["dog", "cat", "fox", "penguins"],
    "music": ["guitar", "music", "plays", "playing"],
    "places": ["paris", "france", "river", "city"],
    "time": ["day", "night", "year"],
    "numbers": ["one", "two", "three"],
    "sizes": ["big", "small", "long", "short"],
}
LABELS = sorted(CLASSES)
ROWS = 240  # 40 a class: 24 held out for the test split, 21 for validation, 195 trained on
# tiny and learnable in seconds: every layer trains, 20 passes at 1e-3
TINY = ["batch_size=8", "threads=1", "teacher_epochs=20", "student_epochs=20", "teacher_lr=1e-3",
        "student_lr=1e-3", "teacher_train_top=4", "student_train_top=2", "eval_backend=onnx"]
SETS = [arg for item in TINY for arg in ("--set", item)]


def sentence(rng: random.Random, label: str) -> str:
    return " ".join(rng.sample(FILLER, 2) + [rng.choice(CLASSES[label])] + rng.sample(FILLER, 2))


def rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(sentence(rng, LABELS[i % len(LABELS)]), LABELS[i % len(LABELS)]) for i in range(count)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_bases: dict[str, Path]) -> dict:
    """One `build` from a header-less CSV (text,label; no header line) into a fresh models folder."""
    root = tmp_path_factory.mktemp("user")
    data = root / "tickets.csv"
    with data.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows(ROWS, 0))
    models = root / "models"
    done = cli("build", "--task", "classification", "--data", str(data), "--no-header", "--name", "tickets",
               "--models", str(models), "--base", str(tiny_bases["bert"]), *SETS, cache=root)
    return {"root": root, "data": data, "models": models, "done": done}


def test_build_from_a_headerless_csv_records_how_the_file_was_read(built: dict) -> None:
    models, out = built["models"], built["done"].stdout
    assert sorted(p.name for p in models.iterdir()) == ["tickets-student", "tickets-teacher"]
    teacher, student = manifest(models / "tickets-teacher"), manifest(models / "tickets-student")
    for m, role in ((teacher, "teacher"), (student, "student")):
        assert (m["pair"], m["role"], m["name"]) == ("tickets", role, f"tickets-{role}")
        assert m["labels"] == {str(i): name for i, name in enumerate(LABELS)}  # inferred: sorted distinct values
        recipe = m["recipe"]
        assert (recipe["header"], recipe["text_column"], recipe["label_column"]) == (False, None, None)
        assert recipe["labels"] == LABELS
        assert recipe["min_words"] == 0  # SST-2's phrase filter does not apply to a user's file
        assert m["onnx"]["model.onnx"]["parity"]["ok"] is True
        assert m["test"]["rows"] == 24
        assert m["validation"]["rows"] == 21
        quality = m["quality"]["tickets-test"]["onnx"]
        assert quality["rows"] == 24
        agreement = m["int8_agreement"]["tickets-test"]  # the int8 file against fp32 on the same 24 rows
        assert agreement["items"] == 24
        assert agreement["label_agreement"] == pytest.approx(1 - agreement["differ"] / 24, abs=1e-6)
        assert m["quality"]["tickets-test"]["onnx-int8"]["rows"] == 24
        steps = [step["step"] for step in m["build"]["steps"]]
        assert steps[steps.index("export"):] == ["export", "validation (onnx)", "int8 guard", "evaluate (onnx)",
                                                 "int8 agreement"]
        assert m["onnx"]["model.int8.onnx"]["guard"]["validation"]["items"] == 21  # calibrated on validation
        assert quality["data"]["path"] == m["test"]["path"] == recipe["eval_data"]
    assert teacher["student"] == "tickets-student"
    # the test split is never trained on: training rows + validation + test = the file
    assert teacher["data"][0]["rows"] + 21 + 24 == ROWS
    test_rows = Path(teacher["test"]["path"]).read_text().splitlines()
    val_rows = Path(teacher["validation"]["path"]).read_text().splitlines()
    assert test_rows[0] == "text\tlabel"
    assert len(test_rows) == 25
    assert not set(test_rows[1:]) & set(val_rows[1:])
    assert teacher["quality"]["tickets-test"]["onnx"]["accuracy"] >= 0.5, teacher["quality"]  # chance: 1/6
    assert student["cascade"]["items"] == 21  # calibrated on the validation split
    for name in ("tickets-teacher", "tickets-student"):  # with the fp32 answers the int8 guard's step had
        assert f"calibrate: {name} answered the split already in this build" in built["done"].stderr
    assert "tickets: student / teacher, 95% paired-bootstrap intervals" in out
    assert "| tickets-test (24) | onnx | accuracy |" in out
    assert f"pair tickets: {models / 'tickets-teacher'}, {models / 'tickets-student'}" in out


@pytest.mark.asyncio(loop_scope="session")
async def test_the_built_pair_is_served(built: dict) -> None:
    async with serve(Settings(models_dir=built["models"], backends=["onnx"], threads=1)) as client:
        listed = (await client.get("/models")).json()
        answered = await client.post("/classify", json={"inputs": ["the film was a dog and a cat"],
                                                          "model": "tickets:student"})
        cascade = await client.post("/classify", json={"inputs": ["a long big story"], "model": "tickets:cascade"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["results"][0][0]["label"] in LABELS
    assert cascade.status_code == 200, cascade.text
    assert cascade.json()["results"][0][0]["label"] in LABELS
    pairs = {p["name"]: p for p in listed["pairs"]}
    assert (pairs["tickets"]["teacher"], pairs["tickets"]["student"]) == ("tickets-teacher", "tickets-student")
    assert {m["name"] for m in listed["models"]} == {"tickets-teacher", "tickets-student"}


def test_unknown_label_at_evaluate_is_one_line_naming_file_line_and_label(built: dict) -> None:
    bad = built["root"] / "bad.csv"
    bad.write_text("a dog and a cat,animals\na big city,weather\n")
    args = ["evaluate", str(built["models"] / "tickets-student"), "--backend", "onnx", "--data", str(bad),
            "--no-header"]
    done = cli(*args, cache=built["root"], check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}:2: unknown label 'weather' (known: {LABELS})"], done.stderr
    assert done.stderr.strip().splitlines()[-1] == errors[0]
    verbose = cli("-v", *args, cache=built["root"], check=False)  # -v keeps the traceback visible
    assert verbose.returncode == 2
    assert "Traceback" in verbose.stderr
    assert "DataError" in verbose.stderr


def test_a_tsv_with_a_content_column(tmp_path: Path, tiny_bases: dict[str, Path]) -> None:
    data = tmp_path / "reviews.tsv"
    data.write_text("id\tcontent\tcategory\n" + "".join(f"{i}\t{t}\t{y}\n" for i, (t, y) in enumerate(rows(36, 1))))
    common = ["train", "--task", "classification", "--data", str(data), "--base", str(tiny_bases["bert"]),
              "--set", "teacher_epochs=1", "--set", "threads=1", "--set", "batch_size=8"]
    failed = cli(*common, "--out", str(tmp_path / "nope"), cache=tmp_path, check=False)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: {data}:2: missing text column")
    cli(*common, "--text-column", "content", "--label-column", "category", "--out", str(tmp_path / "m"),
        cache=tmp_path)
    m = manifest(tmp_path / "m")
    assert (m["recipe"]["text_column"], m["recipe"]["label_column"]) == ("content", "category")
    assert m["labels"] == {str(i): name for i, name in enumerate(LABELS)}
    assert m["data"][0]["rows"] == 36 - 3  # a tenth held out for validation


def test_columns_by_position_and_text_pairs(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("is it a dog,a cat,2\nwhere is paris,in france,10\n\nhow long,very,2\n")
    examples, record = load_labelled(pairs, labels=["2", "10"], header=False)
    assert [(e.text, e.text_pair, e.label) for e in examples] == [
        ("is it a dog", "a cat", 0), ("where is paris", "in france", 1), ("how long", "very", 0)]
    assert record.rows == 3
    assert label_values(pairs, header=False) == ["2", "10"]  # integers sort by value
    # a header names the columns, and a position still picks one
    named = tmp_path / "named.tsv"
    named.write_text("label\tbody\tother\nx\tfirst text\tsecond text\n")
    (example,), _ = load_labelled(named, labels=["x"], text_col="1", pair_col="other", label_col="label")
    assert (example.text, example.text_pair, example.label) == ("first text", "second text", 0)
    with pytest.raises(ValueError, match=rf"^{named}:2: no label column 'kind'"):
        load_labelled(named, labels=["x"], text_col="body", label_col="kind")
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"text": "a dog", "label": "x"}\n')
    with pytest.raises(ValueError, match="--no-header is for TSV/CSV"):
        load_labelled(jsonl, labels=["x"], header=False)


def test_which_files_keep_the_recipes_labels() -> None:
    sst2 = ("negative", "positive")
    assert inferred_labels(["0", "1"], sst2) is None  # SST-2 shaped: ids of negative/positive
    assert inferred_labels(["negative", "positive"], sst2) is None
    assert inferred_labels(["1", "perhaps"], sst2) is None  # a typo: an unknown label on its line
    assert inferred_labels(["0", "1", "2"], sst2) == ("0", "1", "2")
    assert inferred_labels(["ham", "spam"], sst2) == ("ham", "spam")


def test_validation_rows_are_whole_rows_whose_phrases_are_not_trained_on(tmp_path: Path,
                                                                          tiny_bases: dict[str, Path]) -> None:
    """SST-2-like data (every sentence and two of its phrases as rows): the validation split holds
    whole sentences only, and the phrases inside them are left out of training."""
    rng = random.Random(3)
    lines = []
    for i in range(30):
        label = LABELS[i % len(LABELS)]
        words = [*rng.sample(FILLER, 3), rng.choice(CLASSES[label]), f"w{i}"]  # w{i}: no two sentences share a phrase
        lines += [(" ".join(words), label), (" ".join(words[1:4]), label), (" ".join(words[2:]), label)]
    data = tmp_path / "phrases.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in lines))
    done = cli("train", "--task", "classification", "--data", str(data), "--base", str(tiny_bases["bert"]),
               "--set", "teacher_epochs=1", "--set", "threads=1", "--set", "batch_size=8", "--out",
               str(tmp_path / "m"), cache=tmp_path)
    m = manifest(tmp_path / "m")
    held = [line.split("\t")[0] for line in Path(m["validation"]["path"]).read_text().splitlines()[1:]]
    sentences = {t for t, _ in lines[::3]}
    assert len(held) == 9  # a tenth of 90 rows
    assert set(held) <= sentences  # all of them whole sentences
    assert m["data"][0]["rows"] == 90 - 9 - 2 * 9  # each held-out sentence's two phrases are not trained on
    assert "held out 9 whole rows; 18 rows inside them left out of training" in done.stderr
