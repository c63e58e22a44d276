"""The student is every other teacher layer, with the teacher's embeddings and head."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from training.modeling import forward_range, stack_of
from training.student import default_layer_map, make_student, parse_layer_map


def layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    owner, attr = stack_of(model)
    return getattr(owner, attr)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_student_layer_i_holds_teacher_layer_2i(tiny_bases: dict, arch: str) -> None:
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bases[arch], num_labels=2)
    assert default_layer_map(4) == [0, 2]
    student = make_student(teacher, default_layer_map(4))
    assert len(layers(student)) == 2
    for i, layer in enumerate(layers(student)):
        assert same(layer, layers(teacher)[2 * i])
        assert not same(layer, layers(teacher)[2 * i + 1])
    assert same(student.base_model.embeddings, teacher.base_model.embeddings)
    head = "classifier"
    assert same(getattr(student, head), getattr(teacher, head))


def test_custom_layer_map_and_errors(tiny_bases: dict) -> None:
    teacher = AutoModelForQuestionAnswering.from_pretrained(tiny_bases["bert"])
    student = make_student(teacher, parse_layer_map("1,3", 4))
    assert same(layers(student)[0], layers(teacher)[1])
    assert same(layers(student)[1], layers(teacher)[3])
    assert same(student.qa_outputs, teacher.qa_outputs)
    assert parse_layer_map(None, 12) == [0, 2, 4, 6, 8, 10]
    with pytest.raises(ValueError, match="0..3"):
        parse_layer_map("0,4", 4)


def test_distilbert_student() -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    teacher = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=4, n_heads=2,
                                                                   hidden_dim=32))
    student = make_student(teacher, [0, 2])
    assert student.config.n_layers == 2
    assert same(layers(student)[1], layers(teacher)[2])


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_cached_lower_layers_give_the_full_forward(tiny_bases: dict, arch: str) -> None:
    """Training runs the top layers on cached lower-layer states: it must equal the whole model."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bases[arch], num_labels=2).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 13, 14, 15, 16, 3]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        full = model(**{k: v for k, v in batch.items() if arch == "bert" or k != "token_type_ids"}).logits
        hidden = forward_range(model, 0, 3, batch, head=False)
        top = forward_range(model, 3, 4, batch, hidden=hidden).logits
    torch.testing.assert_close(top, full)
    assert len(layers(model)) == 4  # the split view is undone


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_intermediate_targets_are_the_same_from_the_teachers_cache(tiny_bases: dict, arch: str) -> None:
    """alpha_mid's targets (the inputs of teacher layers 1, 2 and 3 of 4) are the same whether the
    teacher stage's cache pass kept the lower ones or the distillation runs the whole teacher."""
    from training.engine import cache_hidden, make_batches
    from training.tasks.common import teacher_outputs

    teacher = AutoModelForQuestionAnswering.from_pretrained(tiny_bases[arch]).eval()
    rows = [{"input_ids": [2, 5 + i, 7, 9, 3][: 3 + i % 3], "attention_mask": [1] * (3 + i % 3)} for i in range(5)]
    full, cached = make_batches(rows, 2, 0), make_batches(rows, 2, 0)
    cache_hidden(teacher, cached, 2, "t_hidden", "cache", also=[1])          # teacher first trained layer: 2
    assert all(b["t_low"].shape[0] == 1 for b in cached)
    for batches in (full, cached):
        teacher_outputs(teacher, batches, 2, keep_hidden=True, desc="teacher", mid_layers=[1, 2, 3])
    for a, b in zip(full, cached, strict=True):
        assert a["t_mid"].shape == (3, *a["input_ids"].shape, 32)          # [pairs, batch, seq, hidden]
        torch.testing.assert_close(a["t_mid"], b["t_mid"], atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(a["t_start_logits"], b["t_start_logits"], atol=1e-4, rtol=1e-4)
        assert not {"t_hidden", "t_low"} & set(b)                           # the caches are freed
    with torch.no_grad():
        states = teacher(input_ids=full[0]["input_ids"], attention_mask=full[0]["attention_mask"],
                         output_hidden_states=True).hidden_states
    torch.testing.assert_close(full[0]["t_mid"][1].float(), states[2], atol=2e-3, rtol=2e-3)
