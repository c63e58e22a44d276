"""`python -m benchmarks.bench_cold_start` on a tiny model: real service processes, started cold.
The model-worker choice is made after the first answer (measured once the service is idle),
and read back at once from the memory file an earlier start wrote."""

from __future__ import annotations

import json
from pathlib import Path

from app.repository.workers import SETTLE_S
from benchmarks.bench_cold_start import main


def test_the_first_answer_does_not_wait_for_the_worker_choice(model_repo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "starts.json"
    assert main(["--model-dir", str(model_repo / "sst2-student"), "--backend", "onnx", "--rounds", "1",
                 "--port", "8967", "--out", str(out)]) == 0
    starts = json.loads(out.read_text())
    measured, remembered = starts["measured"][0], starts["remembered"][0]
    for start in (measured, remembered):
        assert 0 < start["listening_s"] < start["first_answer_s"]
        assert start["workers"] in (1, 2)
        assert start["model_workers"] < start["load"]  # the phase only reads the memory
    # measured: the first pair waits SETTLE_S after the last request (the first answer's)
    assert measured["workers_chosen_s"] - measured["first_answer_s"] > SETTLE_S - 0.1
    # remembered: chosen before serving, seen by the first poll after the answer
    assert remembered["workers_chosen_s"] - remembered["first_answer_s"] < SETTLE_S - 0.1
    assert "| measured |" in capsys.readouterr().out
