"""`python -m tests.ci_data --out DIR`: a data folder laid out like ../shared/data (the recipes'
default file names) with tiny synthetic files, plus a tiny pretrained base in DIR/base. The
container check (.ci/containers_check.sh) runs the `models` image's one-shot build on it, so that
the image's real build path runs in CI in seconds (the same data the training tests use)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.training.conftest import TINY, TINY_QA, save_base, write_sentiment, write_squad, write_stsb

# build-defaults overrides that make the recipes fit the tiny data (as tests/training/test_cli.py)
BUILD_SETS = [*TINY, *TINY_QA, "base=/data/base"]


def write(out: Path) -> Path:
    for folder in ("sst2", "squad", "stsb"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    write_sentiment(out / "sst2/train.tsv", 96, 0)
    write_sentiment(out / "sst2/dev.tsv", 24, 1)
    write_squad(out / "squad/squad-v1.1-dev-articles-00-37.json", 4, 4)
    write_stsb(out / "stsb/train.tsv", 40, 2)
    write_stsb(out / "stsb/dev.tsv", 18, 3)
    save_base(out / "base", "mpnet")
    (out / "build-args").write_text(" ".join(f"--set {s}" for s in BUILD_SETS) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the data and the base into")
    print(write(parser.parse_args().out))
