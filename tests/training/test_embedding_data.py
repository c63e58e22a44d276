"""The embedding student learns from the sentences of several files, never from the evaluation
set's (through the CLI: `train` + `distil --task embedding --set extra_data=...`)."""
from __future__ import annotations

from pathlib import Path

from tests.training.conftest import TINY
from tests.training.test_cli import cli, manifest


def test_extra_sentences_join_and_evaluation_sentences_are_left_out(tmp_path: Path, tiny_bases: dict,
                                                                    tiny_data: dict) -> None:
    train = tiny_data["stsb_train"].read_text().splitlines()
    shared = train[1].split("\t")[0]  # a training sentence that the evaluation set also holds
    dev = tmp_path / "dev.tsv"
    dev.write_text(f"sentence1\tsentence2\tscore\n{shared}\tsomething else entirely here\t1.0\n")
    common = [item for item in TINY if not item.startswith("min_words")]
    sets = [arg for item in [*common, f"train_data={tiny_data['stsb_train']}", f"eval_data={dev}",
                             f"extra_data={tiny_data['sst2_train']}", "extra_min_words=6", "student_rows=100000"]
            for arg in ("--set", item)]
    teacher, student = tmp_path / "t", tmp_path / "s"
    cli("train", "--task", "embedding", "--base", str(tiny_bases["mpnet"]), "--out", str(teacher), *sets,
        cache=tmp_path)
    cli("distil", "--task", "embedding", "--teacher", str(teacher), "--out", str(student), *sets, cache=tmp_path)
    data = manifest(student)["data"][0]
    stsb = {cell for line in train[1:] for cell in line.split("\t")[:2]}
    sst2 = {line.split("\t")[0] for line in tiny_data["sst2_train"].read_text().splitlines()[1:]}
    assert data["extra"] == [{"path": str(tiny_data["sst2_train"]), "sentences": len(sst2)}]
    assert data["excluded_as_evaluation_sentences"] == 1
    assert data["rows"] == len(stsb | sst2) - 1
