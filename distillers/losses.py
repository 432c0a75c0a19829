"""Distillation losses as pure functions (no modules, no state). algorithms.md §2."""

from typing import Sequence

import torch
import torch.nn.functional as F


LS_EPS = 1e-7          # LSKD's official epsilon, added to the standard deviation


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardisation (LSKD, Sun et al., CVPR 2024): each sample's logits minus their mean,
    over their standard deviation (unbiased, as `torch.std`) plus LS_EPS. Applied to teacher and
    student before the temperature softmax; the temperature is then LSKD's base temperature."""
    z = _at_least_fp32(logits)
    return (z - z.mean(dim=1, keepdim=True)) / (LS_EPS + z.std(dim=1, keepdim=True))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch-mean (algorithms.md §2.2)."""
    t = temperature
    log_p_s = F.log_softmax(_at_least_fp32(student_logits) / t, dim=1)
    log_p_t = F.log_softmax(_at_least_fp32(teacher_logits) / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def ofa_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             eps: float = 1.0, temperature: float = 1.0, paper_form: bool = False) -> torch.Tensor:
    """OFA-KD's target-enhanced loss (algorithms.md §2.5), batch mean of -sum_c w_c log p_s,c.

    Code form (default): w = (p_t + onehot)^eps - onehot, i.e. (1 + p_t,y)^eps - 1 on the target
    and p_t,c^eps elsewhere. `paper_form`: the non-target weights are p_t,c (no exponent); the two
    agree at eps = 1. Temperature on both sides, no T^2. `log_softmax` keeps it finite where the
    official `log(softmax)` gives NaN. `target`: class indices, or soft labels (argmax is used).
    """
    z_s, z_t = _at_least_fp32(student_logits) / temperature, _at_least_fp32(teacher_logits) / temperature
    p_t = F.softmax(z_t, dim=1)
    onehot = F.one_hot(hard_target(target), z_s.shape[1]).to(p_t.dtype)
    if paper_form:
        weight = onehot * ((1 + p_t) ** eps - 1) + (1 - onehot) * p_t
    else:
        weight = (p_t + onehot) ** eps - onehot
    return -(weight * F.log_softmax(z_s, dim=1)).sum(dim=1).mean()


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 2.0, temperature: float = 1.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al., 2022): alpha * TCKD + beta * NCKD, both times T^2, batch mean.

    TCKD: KL between the binary (target, rest) distributions; NCKD: KL between the distributions
    over the non-target classes. Computed in log space (the official code takes log of a
    probability and masks with -1000). `target`: indices or soft labels (argmax).
    """
    t = temperature
    z_s, z_t = _at_least_fp32(student_logits) / t, _at_least_fp32(teacher_logits) / t
    gt = F.one_hot(hard_target(target), z_s.shape[1]).bool()
    idx = hard_target(target)[:, None]
    tckd = F.kl_div(_binary_log_probs(z_s, gt, idx), _binary_log_probs(z_t, gt, idx), reduction="batchmean",
                    log_target=True)
    masked_s, masked_t = z_s.masked_fill(gt, float("-inf")), z_t.masked_fill(gt, float("-inf"))
    log_q_s = F.log_softmax(masked_s, dim=1).masked_fill(gt, 0.0)
    log_q_t = F.log_softmax(masked_t, dim=1).masked_fill(gt, 0.0)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1).mean()
    return (alpha * tckd + beta * nckd) * (t * t)


def _binary_log_probs(z: torch.Tensor, gt: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 - p_target] from logits, stably (gather: no host sync on GPU)."""
    lse_all = torch.logsumexp(z, dim=1)
    log_p_gt = z.gather(1, idx).squeeze(1) - lse_all
    log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - lse_all
    return torch.stack([log_p_gt, log_rest], dim=1)


def hcl_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
             levels: Sequence[int] = (4, 2, 1)) -> torch.Tensor:
    """ReviewKD's hierarchical context loss for one NCHW feature pair (algorithms.md §2.4).

    MSE at full resolution (weight 1), then at each pooled level k < H (adaptive average pooling
    to k x k) with a weight halved per level used; divided by the sum of the weights. A skipped
    level does not consume a halving.
    """
    s, t = _at_least_fp32(student_feat), _at_least_fp32(teacher_feat)
    loss, weight, total = F.mse_loss(s, t), 1.0, 1.0
    for k in levels:
        if k >= s.shape[2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, k), F.adaptive_avg_pool2d(t, k))
        total += weight
    return loss / total


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022), as in the OFA-KD/RSD code: on p = softmax(z / T),
    beta * T^2 * (1 - mean Pearson correlation of the rows: inter-class relation of each sample)
    + gamma * T^2 * (1 - mean Pearson correlation of the columns: intra-class relation over the batch).
    The correlation is the cosine of the centred vectors with 1e-8 added to the product of the norms."""
    t = temperature
    p_s = F.softmax(_at_least_fp32(student_logits) / t, dim=1)
    p_t = F.softmax(_at_least_fp32(teacher_logits) / t, dim=1)
    inter = 1 - _pearson_rows(p_s, p_t).mean()
    intra = 1 - _pearson_rows(p_s.t(), p_t.t()).mean()
    return (beta * inter + gamma * intra) * (t * t)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


RSD_EPS = 1e-5         # RSD's official epsilon, added to the batch standard deviation


def rsd_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, kappa: float = 0.01) -> torch.Tensor:
    """RSD's redundancy-suppression loss (Zhang et al., ICCV 2025): both (B, D) features standardised
    over the batch (biased std + RSD_EPS), cross-correlation C = Z_t^T Z_s / B, then the sum of
    (C - I)^2 with the off-diagonal terms times `kappa` (invariance on the diagonal, decorrelation
    off it). `student_feat` is the projected student feature, of the teacher's width."""
    z_s, z_t = _standardize_batch(_at_least_fp32(student_feat)), _standardize_batch(_at_least_fp32(teacher_feat))
    c = z_t.t() @ z_s / z_s.shape[0]
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    sq = (c - eye).pow(2)
    return kappa * sq.sum() + (1 - kappa) * sq.diagonal().sum()


def _standardize_batch(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(dim=0)) / (x.std(dim=0, unbiased=False) + RSD_EPS)


def hard_target(target: torch.Tensor) -> torch.Tensor:
    """Class indices from indices or from soft (mixup, smoothed) label rows."""
    return target.argmax(dim=1) if target.dtype.is_floating_point else target


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses run in fp32 under bf16 autocast, and keep float64 inputs in float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
