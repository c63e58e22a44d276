"""manifest.json: what a model is, how it was made and how good it is (models/README.md).

Models are written to a temporary sibling folder and renamed when complete, so an interrupted
build never leaves a folder that looks finished.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from inference.backends import ONNX_FILES
from inference.modelfolder import read_json
from training.modeling import count_params, num_layers, position_limit

SCHEMA_VERSION = 1
VERSIONED = ("torch", "transformers", "onnxruntime", "onnx", "tokenizers", "numpy")


def versions() -> dict[str, str]:
    """Installed versions of what shaped the model (absent packages are left out)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def describe(model: PreTrainedModel, **fields: Any) -> dict[str, Any]:
    """Manifest fields read off the model itself, plus the caller's (name, task, role, ...)."""
    config = model.config
    labels = None
    if fields.get("task") == "classification":
        labels = {str(i): name for i, name in sorted((config.id2label or {}).items())}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "layers": num_layers(model),
        "hidden_size": getattr(config, "hidden_size", getattr(config, "dim", None)),
        "params": count_params(model),
        "labels": labels,
        "teacher": None,
        "student": None,
        "quality": {},
        "onnx": {},
        "versions": versions(),
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    manifest.update(fields)
    limit = position_limit(config)
    if limit is not None and manifest.get("max_length", 0) > limit:  # a recipe's serving length, on a smaller model
        manifest["max_length"] = limit
    return manifest


def read_manifest(model_dir: Path, required: bool = False) -> dict[str, Any]:
    """The folder's manifest.json; {} for a plain Hugging Face folder (no manifest), or a
    FileNotFoundError naming the file when `required`. Broken JSON is a ValueError naming it."""
    path = Path(model_dir) / "manifest.json"
    if required and not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (not a model folder written by training)")
    return read_json(path)


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): readers never see half a manifest."""
    path = Path(model_dir) / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def update_manifest(model_dir: Path, **changes: Any) -> dict[str, Any]:
    """Change fields of an existing manifest (a FileNotFoundError when there is none)."""
    manifest = read_manifest(model_dir, required=True)
    manifest.update(changes)
    write_manifest(model_dir, manifest)
    return manifest


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path,
               manifest: dict[str, Any]) -> Path:
    """Weights, config, tokenizer and manifest into ``out`` (replacing an older folder)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.config.architectures = [manifest["architecture"]]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_manifest(out, manifest)
    readable_by_all(out)
    return out


def readable_by_all(folder: Path) -> None:
    """safetensors writes its file owner-only (0600): a folder built here and mounted into the
    service's container, which runs as another user (uid 10001), would be refused as unreadable.
    Model files are not secrets: every file gets the permissions of the umask, as a plain write."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def is_complete(model_dir: Path, need_quality: bool = True, need_onnx: bool = True,
                recipe: str | None = None) -> bool:
    """A built model: manifest with name/task/role, weights, and (if asked) ONNX + quality; with
    `recipe`, built by that recipe (a folder another recipe built is not this recipe's model)."""
    try:
        manifest = read_manifest(model_dir)
    except (OSError, ValueError):
        return False
    if not all(manifest.get(k) for k in ("name", "task", "role")):
        return False
    if recipe is not None and (manifest.get("recipe") or {}).get("name") != recipe:
        return False
    if need_onnx and not (manifest.get("onnx") and (Path(model_dir) / ONNX_FILES["onnx"]).is_file()):
        return False
    return bool(manifest.get("quality")) or not need_quality
