"""Distillation losses as pure functions (no modules, no state)."""

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch-mean (algorithms.md §2.2)."""
    t = temperature
    log_p_s = F.log_softmax(_at_least_fp32(student_logits) / t, dim=1)
    log_p_t = F.log_softmax(_at_least_fp32(teacher_logits) / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses run in fp32 under bf16 autocast, and keep float64 inputs in float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
