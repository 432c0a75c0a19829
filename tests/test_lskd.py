"""Logit standardisation (LSKD, CVPR 2024): the z-score by hand, its invariances, equality with plain
KD on standardised logits, the switch on kd/dkd/ofa/pat, and the `kd+ls` column at the paper's defaults."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from distillers.losses import LS_EPS, dkd_loss, kd_loss, standardize_logits
from kdbench.config import _plain
from kdbench.registry import DISTILLERS

from test_distillers import batch, make

torch.manual_seed(0)
Z_S = torch.randn(6, 10, dtype=torch.float64) * 3 + 1
Z_T = torch.randn(6, 10, dtype=torch.float64) * 5 - 2
LABELS = torch.tensor([0, 3, 9, 2, 2, 7])


def test_standardize_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    mean, std = 3.0, math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)      # unbiased, as torch.std
    expect = torch.tensor([[(v - mean) / (LS_EPS + std) for v in (1, 2, 3, 6)]], dtype=torch.float64)
    assert torch.allclose(standardize_logits(z), expect, atol=1e-12)


def test_ls_kd_is_invariant_to_each_sides_shift_and_positive_scale():
    ls = lambda s, t: kd_loss(standardize_logits(s), standardize_logits(t), 2.0)     # noqa: E731
    base = ls(Z_S, Z_T)
    shifted = ls(Z_S * 4.0 + 7.0, Z_T * 0.25 - 3.0)             # per-tensor scale and shift
    per_row = ls(Z_S * torch.rand(6, 1, dtype=torch.float64).add(0.5) + torch.randn(6, 1, dtype=torch.float64), Z_T)
    assert torch.allclose(base, shifted, atol=1e-9) and torch.allclose(base, per_row, atol=1e-9)
    assert not torch.allclose(kd_loss(Z_S, Z_T, 2.0), kd_loss(Z_S * 4.0 + 7.0, Z_T, 2.0))  # plain KD is not


def test_ls_equals_plain_kd_on_standardised_logits():
    zs, zt = standardize_logits(Z_S), standardize_logits(Z_T)
    assert torch.allclose(standardize_logits(zs), zs, atol=1e-6)     # idempotent up to the epsilon
    assert torch.allclose(kd_loss(standardize_logits(zs), standardize_logits(zt), 2.0), kd_loss(zs, zt, 2.0), atol=1e-6)
    by_hand = (F.softmax(zt / 2, 1) * (F.log_softmax(zt / 2, 1) - F.log_softmax(zs / 2, 1))).sum(1).mean() * 4
    assert torch.allclose(kd_loss(zs, zt, 2.0), by_hand, atol=1e-12)


@pytest.mark.parametrize("name", ["kd", "dkd", "ofa"])
def test_switch_standardises_the_logit_terms(name):
    plain = make(name, "kdbench_swin_t_xs", "kdbench_resnet18_xs").train()
    ls = make(name, "kdbench_swin_t_xs", "kdbench_resnet18_xs", logit_standardization=True).train()
    ls.load_state_dict(plain.state_dict())
    images, labels = batch()
    a, b = plain(images, labels), ls(images, labels)
    assert torch.equal(a.losses["gt"], b.losses["gt"])              # cross-entropy sees the raw logits
    term = {"kd": "kd", "dkd": "dkd", "ofa": "kd"}[name]
    assert not torch.allclose(a.losses[term], b.losses[term])
    if name == "dkd":
        with torch.no_grad():
            s, t = ls.student.logits(images), ls.teacher_logits(images)
        cfg = ls.cfg
        want = dkd_loss(standardize_logits(s), standardize_logits(t), labels, cfg.alpha, cfg.beta, cfg.temperature)
        assert torch.allclose(b.losses["dkd"], cfg.kd_weight * want, atol=1e-6)


def test_pat_switch_standardises_its_kd_term_only():
    """PAT's KD term (alpha) sees z-scored logits; the regulariser compares the teacher with itself and
    keeps the raw ones."""
    plain = make("pat", "kdbench_swin_t_xs", "kdbench_resnet18_xs", dim=16, heads=2, num_queries=16).train()
    ls = make("pat", "kdbench_swin_t_xs", "kdbench_resnet18_xs", dim=16, heads=2, num_queries=16,
              logit_standardization=True).train()
    ls.load_state_dict(plain.state_dict())
    images, labels = batch()
    a, b = plain(images, labels), ls(images, labels)
    for term in ("gt", "pat_fd", "pat_reg"):
        assert torch.equal(a.losses[term], b.losses[term]), term
    with torch.no_grad():
        s, t = ls.student.logits(images), ls.teacher_logits(images)
    want = ls.cfg.kd_weight * kd_loss(standardize_logits(s), standardize_logits(t), ls.cfg.temperature)
    assert torch.allclose(b.losses["kd"], want, atol=1e-6) and not torch.allclose(a.losses["kd"], want)


def test_switch_off_keeps_the_recorded_config_and_hash():
    for name in ("kd", "dkd", "ofa", "pat"):
        cfg = DISTILLERS.get(name).Config()
        assert "logit_standardization" not in _plain(cfg, full=False)             # opt-in: old hashes hold
        assert _plain(dataclasses.replace(cfg, logit_standardization=True), full=False)["logit_standardization"]
        assert "logit_standardization" in _plain(cfg, full=True)


def test_kd_ls_column_uses_the_paper_defaults():
    cls = DISTILLERS.get("kd+ls")
    cfg = cls.Config()
    assert (cfg.temperature, cfg.kd_weight, cfg.gt_weight, cfg.logit_standardization) == (2.0, 9.0, 1.0, True)
    assert cls.display_name == "KD+LS"
    d = make("kd+ls", "kdbench_swin_t_xs", "kdbench_resnet18_xs").train()
    images, labels = batch()
    out = d(images, labels)
    with torch.no_grad():
        s, t = d.student.logits(images), d.teacher_logits(images)
    want = 9.0 * kd_loss(standardize_logits(s), standardize_logits(t), 2.0)
    assert torch.allclose(out.losses["kd"], want, atol=1e-6)
