"""bf16 training: the no-grad passes (frozen-layer caches, teacher targets) run on a copy of the
model whose Linear weights are bfloat16, with autocast's numbers exactly, and the weights that
are saved stay the fp32 ones (through the CLI, and `training.modeling`'s public helpers)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.training.conftest import TINY, tiny_encoder
from tests.training.test_cli import cli, manifest
from training.modeling import forward_range, inference_copy, layer_range, set_precision


def by_layer_suffix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights keyed from 'encoder.layer.' on, so a task model's and its base's names match."""
    return {key[key.index("encoder.layer."):]: value for key, value in weights.items() if "encoder.layer." in key}


def test_bf16_training_saves_the_frozen_layers_exactly(tmp_path: Path, tiny_bases: dict, tiny_data: dict) -> None:
    base, data = tiny_bases["bert"], tiny_data["sst2_train"]
    sets = [arg for item in [*TINY, "precision=bf16"] for arg in ("--set", item)]
    cli("train", "--task", "classification", "--data", str(data), "--base", str(base), "--out",
        str(tmp_path / "teacher"), *sets, cache=tmp_path)
    cli("distil", "--task", "classification", "--data", str(data), "--teacher", str(tmp_path / "teacher"),
        "--out", str(tmp_path / "student"), *sets, "--set", "alpha_cos=0.5", cache=tmp_path)

    pretrained = by_layer_suffix(load_file(str(base / "model.safetensors")))
    teacher = by_layer_suffix(load_file(str(tmp_path / "teacher" / "model.safetensors")))
    student = by_layer_suffix(load_file(str(tmp_path / "student" / "model.safetensors")))
    assert manifest(tmp_path / "teacher")["training_precision"] == "bf16"
    frozen = [key for key in teacher if key.startswith(("encoder.layer.0.", "encoder.layer.1."))]
    assert frozen
    assert all(teacher[k].dtype == torch.float32 for k in teacher)
    assert all(torch.equal(teacher[k], pretrained[k]) for k in frozen)  # cached through a copy: not rounded
    # the student's frozen layer 0 is the teacher's layer 0, fp32 and exact
    assert all(torch.equal(student[k], teacher[k]) for k in student if k.startswith("encoder.layer.0."))


def test_the_bf16_copy_gives_autocasts_outputs_exactly_and_leaves_the_model_alone() -> None:
    model = tiny_encoder("mpnet", layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1:, 7:] = 0                                                     # padded rows: the mask's dtype matters
    batch = {"input_ids": torch.randint(5, 60, (3, 11)), "attention_mask": mask}
    try:
        set_precision("bf16")
        lower = forward_range(model, 0, 2, batch, head=False)            # [3, 11, 32], fp32 under autocast
        copy = inference_copy(model)
        autocast = forward_range(model, 2, 4, batch, hidden=lower, head=False)
        copied = forward_range(copy, 2, 4, batch, hidden=lower, head=False)
        from_tokens = (forward_range(model, 0, 4, batch, head=False), forward_range(copy, 0, 4, batch, head=False))
        with layer_range(copy, 2, 4):  # embeddings bypassed: the model's dtype (its masks') stays theirs
            assert copy.dtype == torch.float32
    finally:
        set_precision("fp32")
    dtypes = {type(m).__name__: next(m.parameters()).dtype for m in copy.modules() if list(m.parameters(recurse=False))}
    assert dtypes["Linear"] == torch.bfloat16                          # cast once, not on every call
    assert dtypes["LayerNorm"] == dtypes["Embedding"] == torch.float32
    assert copied.dtype == torch.float32
    assert torch.equal(copied, autocast)                                 # the same numbers, bit for bit
    assert torch.equal(*from_tokens)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert inference_copy(model) is model                                # fp32: no copy


def test_a_qa_student_distils_with_the_hidden_state_terms_and_more_windows(tmp_path: Path, tiny_bases: dict,
                                                                           tiny_data: dict) -> None:
    """alpha_cos (DistilBERT's third term) and alpha_mid (TinyBERT's intermediate layers) reach
    QA distillation: each changes what the student learns, and its recipe records it. alpha_mid
    matches the input of the student's second layer to that of its source, teacher layer 2.
    student_windows=all adds the other windows that hold each answer."""
    data = tiny_data["squad"]
    tiny_qa = [item for item in TINY if not item.startswith("min_words")]  # a classification field
    sets = [arg for item in [*tiny_qa, "heldout_articles=1", "max_length=40", "doc_stride=16",
                             "serve_max_length=64", "precision=bf16", "student_train_top=2"] for arg in ("--set", item)]
    cli("train", "--task", "qa", "--data", str(data), "--base", str(tiny_bases["mpnet"]), "--out",
        str(tmp_path / "teacher"), *sets, cache=tmp_path)
    students = {}
    variants = {"plain": ["alpha_cos=0"], "cos": ["alpha_cos=0.5"], "mid": ["alpha_cos=0", "alpha_mid=1.0"],
                "all": ["alpha_cos=0", "student_windows=all", "max_length=16", "doc_stride=6"]}  # short: 2+ windows
    rows = {}
    for name, extra in variants.items():
        out = tmp_path / f"student-{name}"
        cli("distil", "--task", "qa", "--data", str(data), "--teacher", str(tmp_path / "teacher"), "--out", str(out),
            *sets, *[arg for item in extra for arg in ("--set", item)], cache=tmp_path)
        students[name] = load_file(str(out / "model.safetensors"))
        recipe, rows[name] = manifest(out)["recipe"], manifest(out)["data"][0]["rows"]
        assert (recipe["alpha_cos"], recipe["alpha_mid"]) == {"plain": (0, 0), "cos": (0.5, 0), "mid": (0, 1.0),
                                                             "all": (0, 0)}[name]
    questions = manifest(tmp_path / "teacher")["data"][0]["rows"]
    assert rows["plain"] == rows["cos"] == questions < rows["all"]      # one window a question, or every one
    for layer in ("0", "1"):  # both student layers train; the mid term reaches the first one's output
        keys = [k for k in students["plain"] if f"encoder.layer.{layer}." in k]
        assert keys
        assert any(not torch.equal(students["plain"][k], students["cos"][k]) for k in keys)
        assert any(not torch.equal(students["plain"][k], students["mid"][k]) for k in keys)
