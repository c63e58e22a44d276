"""Where things live: every location is a setting (env var or flag), with repo-relative defaults.

One place for these so that the CLI, the recipes and the tests agree.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Assembled pretrained weights and derived data (gitignored); env DISTILSERVE_CACHE_DIR."""
    return Path(os.environ.get("DISTILSERVE_CACHE_DIR", REPO_ROOT / ".cache"))


def data_dir() -> Path:
    """Read-only datasets; env DISTILSERVE_DATA_DIR, default ../shared/data from the repo root."""
    return Path(os.environ.get("DISTILSERVE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def models_dir() -> Path:
    """The model repository the service loads; env DISTILSERVE_MODELS_DIR, default models/."""
    return Path(os.environ.get("DISTILSERVE_MODELS_DIR", REPO_ROOT / "models"))
