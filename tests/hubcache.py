"""An offline Hugging Face hub for tests: model folders laid out as a huggingface_hub cache, so
the real hub code paths (snapshot_download, from_pretrained with a hub id) resolve them with
no network, exactly as they resolve a model downloaded earlier.

Layout (what huggingface_hub writes): <cache>/models--<org>--<name>/blobs/<hash> holding each
file once, snapshots/<commit>/<file> links into blobs, refs/main holding the commit.
huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE when it is imported, so the code under test
must run in a subprocess started with `offline_env`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def add_model(cache: Path, repo_id: str, folder: Path, skip: Iterable[str] = ()) -> Path:
    """Put the files of `folder` (less `skip`) in the cache as repo `repo_id`; return the snapshot."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex string is a valid commit id
    snapshot = repo / "snapshots" / commit
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = source.relative_to(folder)
        if str(relative) in skip:
            continue
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(source.read_bytes())
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def offline_env(root: Path) -> dict[str, str]:
    """Environment for a subprocess that must see only the cache under `root` (models in
    root/hub, datasets cached in root/datasets) and never the network or ~/.cache."""
    return {
        "HF_HOME": str(root / "home"),
        "HF_HUB_CACHE": str(root / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(root / "datasets"),
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
