"""`python -m training` end to end on tiny models and tiny data: train -> distil -> export ->
evaluate -> manifest, and build-defaults (all three tasks) with skip and resume."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import TINY, TINY_QA

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILSERVE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}")
    return done


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def help_text(capsys: pytest.CaptureFixture, *args: str) -> str:
    from training.cli import main

    with pytest.raises(SystemExit):
        main([*args, "--help"])
    return capsys.readouterr().out


def test_help_shows_an_example_per_command(capsys: pytest.CaptureFixture) -> None:
    out = help_text(capsys)
    for command in ("fetch-pretrained", "train", "distil", "build-defaults", "export", "evaluate"):
        assert command in out
        assert "example:" in help_text(capsys, command)


def test_train_distil_export_evaluate(tmp_path: Path, tiny_bases: dict, tiny_data: dict) -> None:
    teacher, student = tmp_path / "t", tmp_path / "s"
    # the tiny data is separable (one sentiment word per sentence): 20 epochs at 1e-3 (seconds
    # here) take teacher and student to ~100% on the dev rows, where TINY's 2 epochs at the
    # default rate leave them at chance (50%)
    learn = [item for item in TINY if not item.startswith(("teacher_epochs=", "student_epochs="))]
    learn += ["teacher_epochs=20", "student_epochs=20", "teacher_lr=1e-3", "student_lr=1e-3"]
    sets = [arg for item in learn for arg in ("--set", item)]
    common = ["--task", "classification", "--data", str(tiny_data["sst2_train"]), *sets]
    cli("train", *common, "--set", "precision=fp32", "--base", str(tiny_bases["bert"]), "--out", str(teacher),
        "--name", "tiny-teacher", cache=tmp_path)
    cli("distil", *common, "--set", "precision=bf16", "--teacher", str(teacher), "--out", str(student),
        "--layer-map", "1,3", cache=tmp_path)
    cli("export", str(student), "--no-int8", cache=tmp_path)
    cli("evaluate", str(student), "--backend", "onnx", "--data", str(tiny_data["sst2_dev"]), cache=tmp_path)
    m = manifest(student)
    assert (m["name"], m["task"], m["role"], m["teacher"]) == ("s", "classification", "student", "tiny-teacher")
    assert m["layers"] == 2
    assert m["layer_map"] == [1, 3]
    assert m["labels"] == {"0": "negative", "1": "positive"}
    assert m["data"][0]["rows"] + m["validation"]["rows"] == 96  # the validation split is carved from it
    assert len(m["data"][0]["sha256"]) == 64
    assert m["recipe"]["teacher_epochs"] == 20
    assert m["seed"] == 0
    assert m["training_time_s"] > 0
    # the student trained under bf16 autocast (recorded), the teacher in fp32; weights are fp32 either way
    assert (m["training_precision"], manifest(teacher)["training_precision"]) == ("bf16", "fp32")
    assert m["onnx"]["model.onnx"]["parity"]["ok"]
    assert m["onnx"]["model.onnx"]["parity"]["ok"] is True
    quality = next(iter(m["quality"].values()))["onnx"]
    assert quality["rows"] == 24
    assert quality["accuracy"] >= 0.8, quality  # chance is 0.5 (balanced labels); measured 1.0
    assert manifest(teacher)["student"] == "s"
    assert manifest(teacher)["layers"] == 4


def test_bad_data_fails_with_file_and_line(tmp_path: Path, tiny_bases: dict) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\t1\nodd film\tperhaps\n")
    args = ["train", "--task", "classification", "--data", str(bad), "--base", str(tiny_bases["bert"]),
            "--out", str(tmp_path / "m"), "--set", "min_words=0"]
    done = cli(*args, cache=tmp_path, check=False)
    assert done.returncode != 0
    assert f"{bad}:3: unknown label 'perhaps'" in done.stderr
    cli(*args, "--skip-bad", "--set", "teacher_epochs=1", "--set", "teacher_train_top=4", cache=tmp_path)
    assert manifest(tmp_path / "m")["data"][0]["skipped"] == 1
    assert manifest(tmp_path / "m")["trained_layers"] == [0, 1, 2, 3]  # full fine-tuning: nothing cached


def build_args(models: Path, base: Path, data: dict) -> list[str]:
    sets = TINY + [
        f"base={base}", f"classification.train_data={data['sst2_train']}",
        f"classification.eval_data={data['sst2_dev']}", f"qa.train_data={data['squad']}", *TINY_QA,
        f"embedding.train_data={data['stsb_train']}", f"embedding.eval_data={data['stsb_dev']}",
    ]
    return ["build-defaults", "--models", str(models), "--no-int8", *[a for s in sets for a in ("--set", s)]]


def test_build_defaults_builds_skips_and_resumes(tmp_path: Path, tiny_bases: dict, tiny_data: dict) -> None:
    models = tmp_path / "models"
    args = build_args(models, tiny_bases["mpnet"], tiny_data)
    first = cli(*args, cache=tmp_path)
    report = json.loads(first.stdout)
    names = {f"{p}-quick-{r}" for p in ("sst2", "squad", "embed") for r in ("teacher", "student")}
    assert {p.name for p in models.iterdir()} == names
    for name in names:
        m = manifest(models / name)
        assert m["role"] == name.split("-")[2]
        assert m["pair"] == name.rsplit("-", 1)[0]
        assert m["onnx"]["model.onnx"]["parity"]["ok"]
        assert (models / name / "model.onnx").is_file()
        assert m["build"]["steps"]
        unreadable = [p.name for p in (models / name).iterdir() if p.is_file() and p.stat().st_mode & 0o044 != 0o044]
        assert not unreadable, f"{name}: not readable by the container's user: {unreadable}"
    squad = manifest(models / "squad-quick-student")["quality"]
    assert set(squad) == {"squad-heldout"}
    assert squad["squad-heldout"]["onnx"]["rows"] == 6  # one held-out article
    assert manifest(models / "embed-quick-teacher")["pooling"] == "mean"
    embed = report["retention"]["embed-quick"][0]
    assert (embed["set"], embed["figure"], embed["items"]) == ("stsb-dev", "spearman", 18)
    assert embed["retention"]["low"] <= embed["retention"]["value"] <= embed["retention"]["high"]
    assert "student / teacher" in first.stderr  # the retention tables, for a person
    cascade = manifest(models / "sst2-quick-student")["cascade"]  # calibrated on the carved validation rows
    assert cascade["items"] == manifest(models / "sst2-quick-student")["validation"]["rows"] == 9
    # fp32 is checked against torch on the 24 fixed texts; int8 against fp32 on those and the
    # model's own validation rows, also when the model is exported again by hand
    assert manifest(models / "sst2-quick-student")["onnx"]["model.onnx"]["parity"]["items"] == 24
    cli("export", str(models / "sst2-quick-student"), cache=tmp_path)
    onnx_entries = manifest(models / "sst2-quick-student")["onnx"]
    assert onnx_entries["model.onnx"]["parity"]["items"] == 24
    assert onnx_entries["model.int8.onnx"]["parity"]["items"] == 24 + 9

    before = (models / "sst2-quick-teacher" / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(models / "sst2-quick-student")
    (models / ".building-sst2-quick-student").mkdir()  # an interrupted build left this behind
    again = cli(*args, cache=tmp_path)
    assert "sst2-quick-teacher is built and valid; skipped" in again.stderr
    assert (models / "sst2-quick-student" / "model.onnx").is_file()
    assert not (models / ".building-sst2-quick-student").exists()
    assert (models / "sst2-quick-teacher" / "model.safetensors").stat().st_mtime_ns == before  # not retrained
    assert manifest(models / "sst2-quick-teacher")["cascade"] == manifest(models / "sst2-quick-student")["cascade"]
    assert "sst2-quick-student distil took" in again.stderr
    assert "sst2-quick-teacher train took" not in again.stderr


def test_another_recipe_builds_its_own_pair_beside(tmp_path: Path, tiny_bases: dict, tiny_data: dict) -> None:
    """A folder complete for one recipe is not another recipe's model: both pairs end up served."""
    models = tmp_path / "models"
    args = build_args(models, tiny_bases["mpnet"], tiny_data)
    cli(*args, "--tasks", "classification", cache=tmp_path)
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps({"teacher_epochs": 1, "student_epochs": 1}))
    cli(*args, "--tasks", "classification", "--recipe", str(recipe), cache=tmp_path)
    assert {p.name for p in models.iterdir()} == {f"sst2-{r}-{role}" for r in ("quick", "tiny")
                                                  for role in ("teacher", "student")}
    assert manifest(models / "sst2-tiny-teacher")["recipe"]["name"] == "tiny"


def test_a_qa_pair_builds_with_the_intermediate_term_and_every_answer_window(tmp_path: Path, tiny_bases: dict,
                                                                             tiny_data: dict) -> None:
    """build-defaults hands the teacher's batches to the student: with alpha_mid reaching below
    the teacher's trained layers, its cache pass keeps those states (t_low), and the student also
    reads the other windows of the teacher's questions."""
    models = tmp_path / "models"
    sets = ["qa.alpha_mid=1", "qa.teacher_train_top=1", "qa.student_train_top=2", "qa.student_windows=all",
            "qa.max_length=16", "qa.doc_stride=6"]  # after TINY_QA: short windows, 2+ a context
    cli(*build_args(models, tiny_bases["mpnet"], tiny_data), "--tasks", "qa",
        *[a for s in sets for a in ("--set", s)], cache=tmp_path)
    teacher, student = manifest(models / "squad-quick-teacher"), manifest(models / "squad-quick-student")
    assert (student["recipe"]["alpha_mid"], student["recipe"]["student_windows"]) == (1, "all")
    assert student["data"][0]["rows"] > teacher["data"][0]["rows"]      # the other answer windows too
    assert student["quality"]["squad-heldout"]["onnx"]["rows"] == 6


def test_a_qa_student_distils_on_its_own_window_length(tmp_path: Path, tiny_bases: dict, tiny_data: dict) -> None:
    """student_max_length: the student reads longer windows than the teacher trained on (the
    served length); the teacher's cached windows are not reused, its whole pass runs on the student's.
    student_crops: the student also reads each question's context with a sentence left out."""
    models = tmp_path / "models"
    sets = ["qa.alpha_mid=1", "qa.teacher_train_top=1", "qa.max_length=16", "qa.student_max_length=40",
            "qa.doc_stride=6", "qa.student_crops=1"]
    done = cli(*build_args(models, tiny_bases["mpnet"], tiny_data), "--tasks", "qa",
               *[a for s in sets for a in ("--set", s)], cache=tmp_path)
    assert "windows of 40 tokens, not the teacher's 16" in done.stderr
    teacher, student = manifest(models / "squad-quick-teacher"), manifest(models / "squad-quick-student")
    assert (teacher["train_max_length"], student["train_max_length"]) == (16, 40)
    assert student["recipe"]["student_max_length"] == 40
    questions = teacher["data"][0]["rows"]                              # every tiny context has 2 sentences
    assert f"{questions} cropped contexts beside {questions} questions" in done.stderr
    assert student["data"][0]["rows"] == 2 * questions
    assert student["quality"]["squad-heldout"]["onnx"]["rows"] == 6
