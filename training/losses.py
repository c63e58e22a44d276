"""Distillation losses, as in DistilBERT's distiller (Sanh et al. 2019).

All functions take float tensors and return a scalar; masks are 1 for real tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NEG = -1e4  # logit given to padding positions: exp() underflows, no NaN from -inf - -inf


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2.

    The T^2 keeps the gradient scale independent of T (Hinton et al. 2015), so alpha_kd and
    alpha_ce stay comparable whatever the temperature. Last dimension = classes.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    per_row = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)
    return per_row.mean() * t * t


def hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cos) between student and teacher hidden states over real tokens.

    student_hidden, teacher_hidden: [batch, seq, hidden]; mask: [batch, seq].
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"alpha_cos needs student and teacher hidden states of one shape, got "
                         f"{list(student_hidden.shape)} and {list(teacher_hidden.shape)}")
    cos = F.cosine_similarity(student_hidden, teacher_hidden.to(student_hidden.dtype), dim=-1)  # [batch, seq]
    weights = mask.to(cos.dtype)
    return ((1.0 - cos) * weights).sum() / weights.sum().clamp(min=1.0)


def mid_cosine(student_states: list[torch.Tensor], teacher_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over layer pairs of hidden_cosine: TinyBERT's intermediate-layer term, as cosine.

    A student built from every other teacher layer starts with each layer fed what the teacher
    layer below its source would have computed; matching the inputs layer by layer mends that
    gap where the last-layer term alone leaves it to the task loss. student_states: one
    [batch, seq, hidden] per pair; teacher_states: [pairs, batch, seq, hidden]; mask [batch, seq].
    """
    terms = [hidden_cosine(s, t, mask) for s, t in zip(student_states, teacher_states, strict=True)]
    return torch.stack(terms).mean()


def classification_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    temperature: float = 2.0,
    alpha_kd: float = 1.0,
    alpha_ce: float = 0.0,
    alpha_cos: float = 0.0,
    hidden: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha_kd * KL * T^2 + alpha_ce * CE(labels) + alpha_cos * cosine(hidden); returns (loss, parts).

    Rows without a gold label (label < 0: unlabelled, teacher-only data) get no CE term.
    """
    total = student_logits.new_zeros(())
    parts: dict[str, float] = {}
    if alpha_kd and teacher_logits is not None:
        kd = kd_kl(student_logits, teacher_logits, temperature)
        total, parts["kd"] = total + alpha_kd * kd, kd.item()
    if alpha_ce and labels is not None and (labels >= 0).any():
        ce = F.cross_entropy(student_logits, labels, ignore_index=-1)
        total, parts["ce"] = total + alpha_ce * ce, ce.item()
    if alpha_cos and hidden is not None:
        cos = hidden_cosine(*hidden)
        total, parts["cos"] = total + alpha_cos * cos, cos.item()
    return total, parts


def masked_span_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Positions that cannot hold an answer (padding, question) get NEG: [batch, seq]."""
    return logits.masked_fill(mask == 0, NEG)


def qa_loss(
    student: tuple[torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor] | None,
    positions: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
    *,
    temperature: float = 2.0,
    alpha_kd: float = 1.0,
    alpha_ce: float = 1.0,
    alpha_cos: float = 0.0,
    hidden: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    alpha_mid: float = 0.0,
    mid: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """QA distillation: KL on start and on end logits (over positions) + CE on the gold span
    + alpha_cos * (1 - cosine) of the student's and teacher's last hidden states, as for
    classification, + alpha_mid * mid_cosine of the intermediate layers.

    student/teacher: (start_logits, end_logits), each [batch, seq]; positions: gold token
    indices [batch]; mask [batch, seq] = positions allowed to be an answer; hidden: (student,
    teacher [batch, seq, hidden], attention mask); mid: (student states, teacher states,
    attention mask) as mid_cosine takes them.
    """
    s_start, s_end = (masked_span_logits(x, mask) for x in student)
    total = s_start.new_zeros(())
    parts: dict[str, float] = {}
    if alpha_kd and teacher is not None:
        t_start, t_end = (masked_span_logits(x.to(s_start.dtype), mask) for x in teacher)
        kd = (kd_kl(s_start, t_start, temperature) + kd_kl(s_end, t_end, temperature)) / 2
        total, parts["kd"] = total + alpha_kd * kd, kd.item()
    if alpha_ce:
        ce = (F.cross_entropy(s_start, positions[0]) + F.cross_entropy(s_end, positions[1])) / 2
        total, parts["ce"] = total + alpha_ce * ce, ce.item()
    if alpha_cos and hidden is not None:
        cos = hidden_cosine(*hidden)
        total, parts["cos"] = total + alpha_cos * cos, cos.item()
    if alpha_mid and mid is not None:
        term = mid_cosine(*mid)
        total, parts["mid"] = total + alpha_mid * term, term.item()
    return total, parts


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding = mean of token states over the attention mask: [batch, hidden]."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def embedding_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Student sentence embeddings reproduce the teacher's: MSE or (1 - cosine); [batch, hidden]."""
    teacher_emb = teacher_emb.to(student_emb.dtype)
    if kind == "mse":
        return F.mse_loss(student_emb, teacher_emb)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_emb, teacher_emb, dim=-1)).mean()
    raise ValueError(f"embedding loss must be 'mse' or 'cosine', got {kind!r}")
