"""Loss invariants of the DistilBERT distiller maths."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import classification_loss, embedding_loss, hidden_cosine, kd_kl, mean_pool, mid_cosine, qa_loss


def test_kl_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(5, 3)
    assert kd_kl(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_kl(logits + 1.0, logits, 4.0).item() == pytest.approx(0.0, abs=1e-5)  # shift-invariant


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kl_carries_the_t_squared_factor(temperature: float) -> None:
    student, teacher = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    p = F.softmax(teacher / temperature, -1)
    q = F.softmax(student / temperature, -1)
    by_hand = float((p * (p.log() - q.log())).sum())
    assert kd_kl(student, teacher, temperature).item() == pytest.approx(by_hand * temperature**2, rel=1e-5)
    assert kd_kl(student, teacher, temperature).item() > 0


def test_classification_loss_mixes_terms_and_skips_unlabelled_rows() -> None:
    s, t = torch.tensor([[1.0, -1.0], [0.5, 0.2]]), torch.tensor([[2.0, -2.0], [0.0, 1.0]])
    labels = torch.tensor([0, -1])
    total, parts = classification_loss(s, t, labels, temperature=2.0, alpha_kd=0.5, alpha_ce=2.0)
    ce_first_row = F.cross_entropy(s[:1], labels[:1]).item()
    assert parts["ce"] == pytest.approx(ce_first_row, rel=1e-5)
    assert total.item() == pytest.approx(0.5 * kd_kl(s, t, 2.0).item() + 2.0 * ce_first_row, rel=1e-5)


def test_hidden_cosine_and_masking() -> None:
    h = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert hidden_cosine(h, h.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    other = h.clone()
    other[0, 2:] = -h[0, 2:]  # differences only under the mask's zeros
    assert hidden_cosine(h, other, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine(h, -h, mask).item() == pytest.approx(2.0, abs=1e-5)


def test_qa_loss_is_ce_only_when_student_equals_teacher() -> None:
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
    positions = (torch.tensor([1, 2]), torch.tensor([2, 5]))
    total, parts = qa_loss((start, end), (start.clone(), end.clone()), positions, mask, alpha_kd=1.0, alpha_ce=1.0)
    assert parts["kd"] == pytest.approx(0.0, abs=1e-6)
    assert parts["ce"] > 0
    assert total.item() == pytest.approx(parts["ce"], rel=1e-6)

    def ce_over_allowed(logits: torch.Tensor, gold: torch.Tensor) -> float:
        """Cross-entropy where only the allowed positions compete, row by row (by hand)."""
        rows = [-torch.log_softmax(row[m.bool()], 0)[int(g) - int((m[:g] == 0).sum())]
                for row, m, g in zip(logits, mask, gold, strict=False)]
        return float(torch.stack(rows).mean())

    expected = (ce_over_allowed(start, positions[0]) + ce_over_allowed(end, positions[1])) / 2
    assert parts["ce"] == pytest.approx(expected, rel=1e-5)  # masked positions take no probability


def test_qa_loss_adds_the_hidden_state_cosine_when_asked() -> None:
    generator = torch.Generator().manual_seed(1)
    start, end = torch.randn(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    mask, positions = torch.ones(2, 6, dtype=torch.long), (torch.tensor([1, 2]), torch.tensor([2, 5]))
    student, teacher = torch.randn(2, 6, 8, generator=generator), torch.randn(2, 6, 8, generator=generator)
    hidden = (student, teacher, mask)
    plain, parts = qa_loss((start, end), (start, end), positions, mask, hidden=hidden)
    assert "cos" not in parts                                            # alpha_cos 0: no term
    total, parts = qa_loss((start, end), (start, end), positions, mask, alpha_cos=0.5, hidden=hidden)
    assert parts["cos"] == pytest.approx(hidden_cosine(student, teacher, mask).item())
    assert total.item() == pytest.approx(plain.item() + 0.5 * parts["cos"], rel=1e-6)


def test_the_intermediate_term_is_the_mean_cosine_gap_over_layer_pairs() -> None:
    """alpha_mid adds mean over pairs of (1 - cos) on real tokens; padding takes no part."""
    mask = torch.tensor([[1, 1, 0]])
    near = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])          # [batch, seq, hidden]
    far = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, -1.0]]])          # gaps 1, 0 (and padding)
    teacher = torch.stack([near, near])                                  # [pairs, batch, seq, hidden]
    assert mid_cosine([near, near], teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert mid_cosine([near, far], teacher, mask).item() == pytest.approx((0.0 + (1.0 + 0.0) / 2) / 2)
    start = end = torch.zeros(1, 3)
    positions = (torch.tensor([0]), torch.tensor([1]))
    plain, _ = qa_loss((start, end), None, positions, mask, hidden=(near, near, mask))
    total, parts = qa_loss((start, end), None, positions, mask, hidden=(near, near, mask), alpha_mid=2.0,
                           mid=([near, far], teacher, mask))
    assert parts["mid"] == pytest.approx(0.25)
    assert total.item() == pytest.approx(plain.item() + 2.0 * 0.25)


def test_embedding_losses_and_mean_pool() -> None:
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    pooled = mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 2.0]]))
    a = torch.randn(3, 8)
    assert embedding_loss(a, a.clone(), "mse").item() == 0.0
    assert embedding_loss(a, 2 * a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_loss(a, 2 * a, "mse").item() > 0
    with pytest.raises(ValueError, match="embedding loss must be 'mse' or 'cosine', got 'l1'"):
        embedding_loss(a, a, "l1")
