"""CRD (Tian et al., ICLR 2020, "Contrastive Representation Distillation"), as the OFA-KD/RSD code runs
it (`distillers/crd.py` there, RepDistiller's memory and loss): the pooled pre-logit features of
student and teacher, each through a trainable Linear to 128 dimensions and L2-normalised, are
contrasted against a memory bank holding one slowly updated embedding per training sample: the
sample's own entry is the positive, 16,384 entries of samples from other classes the negatives. An NCE
loss on both sides (student embedding against the teacher bank, teacher embedding against the student
bank), normalisation constants fixed on the first batch, momentum 0.5 for the bank.

The bank is training state: it is a buffer (checkpointed with the distiller, so a resumed run continues
bit for bit), of 2 x N x `feat_dim` floats for N training samples (ImageNet: 1.31 GB; `kdbench plan`
names it). Under DDP, buffers are broadcast from rank 0 at every step (DDP's default, which the
official code keeps): the banks each rank updates are replaced by rank 0's, so only rank 0's batches'
updates last, as there."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.registry import register_distiller
from kdbench.validators import at_least, in_range, positive

from .base import Distiller, DistillOutput, TaskConfig

NCE_EPS = 1e-7         # the official ContrastLoss's epsilon


@dataclass
class CRDConfig(TaskConfig):
    """The official defaults (`--crd-feat-dim 128 --crd-k 16384 --crd-temperature 0.07 --crd-momentum 0.5`,
    `--kd-loss-weight 1`)."""

    crd_weight: float = 1.0
    feat_dim: int = 128
    num_negatives: int = 16384
    nce_temperature: float = 0.07
    momentum: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        at_least("distiller.feat_dim", self.feat_dim, 1)
        at_least("distiller.num_negatives", self.num_negatives, 1)
        positive("distiller.nce_temperature", self.nce_temperature)
        in_range("distiller.momentum", self.momentum, 0, 1, hi_open=True)


def nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """The official ContrastLoss on (B, 1 + K) normalised scores, the positive first: with the noise
    probability P_n = 1 / num_data, -(sum log P_pos / (P_pos + K P_n + eps) + sum log K P_n / (P_neg +
    K P_n + eps)) / B."""
    k = scores.shape[1] - 1
    noise = k / num_data
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + NCE_EPS))
    log_d0 = torch.log(noise / (neg + noise + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class Embed(nn.Module):
    """Linear to the contrast space, then L2-normalised (official `Embed`: x / ||x||, no epsilon)."""

    def __init__(self, width_in: int, width_out: int):
        super().__init__()
        self.linear = nn.Linear(width_in, width_out)

    def forward(self, x):
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


@register_distiller("crd")
class CRD(Distiller):
    display_name = "CRD"
    level = "features"
    needs_sample_index = True
    Config = CRDConfig

    def __init__(self, student, teacher, cfg, **kwargs):
        super().__init__(student, teacher, cfg, **kwargs)
        self.embed_s = Embed(student.num_features, cfg.feat_dim)
        self.embed_t = Embed(teacher.num_features, cfg.feat_dim)

    def bind_training_set(self, labels: torch.Tensor):
        """The bank (uniform in ±1/sqrt(feat_dim / 3), as the official init) and the class index that
        draws negatives from other classes; the normalisation constants, unset (-1) until the first step."""
        labels = labels.long().flatten()
        super().bind_training_set(labels)
        n, dim = len(labels), self.cfg.feat_dim
        device = self.embed_s.linear.weight.device
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", (torch.rand(n, dim, device=device) * 2 - 1) * stdv)
        self.register_buffer("memory_t", (torch.rand(n, dim, device=device) * 2 - 1) * stdv)
        self.register_buffer("z", torch.full((2,), -1.0, device=device))
        order = torch.argsort(labels.cpu(), stable=True)
        counts = torch.bincount(labels.cpu(), minlength=int(labels.max()) + 1)
        self.register_buffer("by_class", order.to(device), persistent=False)
        self.register_buffer("class_start", (torch.cumsum(counts, 0) - counts).to(device), persistent=False)
        self.register_buffer("class_count", counts.to(device), persistent=False)
        self.register_buffer("sample_label", labels.to(device), persistent=False)

    def training_state_bytes(self, num_train: int) -> int:
        return 2 * num_train * self.cfg.feat_dim * 4 + 2 * 4          # two float32 banks and the two constants

    def negatives(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K) indices of training samples of another class than each sample's, uniformly with
        replacement (the official `CIFAR100InstanceSample`, mode "exact"), from the global RNG."""
        y = self.sample_label[index]
        start, count = self.class_start[y][:, None], self.class_count[y][:, None]
        u = (torch.rand(len(index), self.cfg.num_negatives, device=index.device) * (self.training_set_size - count)).long()
        return self.by_class[torch.where(u < start, u, u + count)]

    def forward(self, images, labels, index=None):
        if index is None or not self.training_set_size:
            raise RuntimeError("CRD needs each sample's dataset index (`index=`) after `bind_training_set`")
        logits, feature = self.student.pooled(images)
        with torch.no_grad():
            _, target = self.teacher.pooled(images)
        f_s, f_t = self.embed_s(feature.float()), self.embed_t(target.float())
        rows = torch.cat([index[:, None], self.negatives(index)], dim=1)          # the positive first
        t = self.cfg.nce_temperature
        with torch.autocast(images.device.type, enabled=False):     # exp(score / 0.07): fp32 even under bf16
            out_s = torch.exp(torch.bmm(self.memory_t[rows], f_s[:, :, None]).squeeze(2) / t)
            out_t = torch.exp(torch.bmm(self.memory_s[rows], f_t[:, :, None]).squeeze(2) / t)
        with torch.no_grad():       # the constants are set once, from the first batch, without a host sync
            first = torch.stack([out_s.mean(), out_t.mean()]) * self.training_set_size
            self.z.copy_(torch.where(self.z < 0, first, self.z))
        n = self.training_set_size
        loss = nce_loss(out_s / self.z[0], n) + nce_loss(out_t / self.z[1], n)
        self._update_memory(index, f_s.detach(), f_t.detach())
        return DistillOutput(logits, {"gt": self.gt_loss(logits, labels), "crd": self.cfg.crd_weight * loss})

    @torch.no_grad()
    def _update_memory(self, index, f_s, f_t):
        m = self.cfg.momentum
        for bank, f in ((self.memory_s, f_s), (self.memory_t, f_t)):
            bank.index_copy_(0, index, F.normalize(bank[index] * m + f * (1 - m), dim=1, eps=0.0))
