"""FitNet with a standardised teacher target (`target_norm`, the `fitnet+norm` column): the
standardisation by hand, its invariance to the teacher feature's scale and shift, the loss against a
direct computation, and the opt-in that keeps plain FitNet's run hashes."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from distillers.fitnet import standardise_channels
from kdbench.config import _plain
from kdbench.registry import DISTILLERS

from test_distillers import batch, make, outputs_and_features


def test_standardise_channels_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64).view(1, 4, 1, 1).repeat(2, 1, 3, 2)
    mean, var = 3.0, ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 4         # biased, over channels
    want = torch.tensor([(v - mean) / (var + 1e-6) ** 0.5 for v in (1, 2, 3, 6)], dtype=torch.float64)
    assert torch.allclose(standardise_channels(x), want.view(1, 4, 1, 1).expand(2, 4, 3, 2), atol=1e-12)


def test_standardised_target_ignores_each_positions_scale_and_shift():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64) * 40 + 7
    scale = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 100 + 0.5      # per sample and position
    shift = torch.randn(3, 1, 4, 4, dtype=torch.float64) * 50
    z = standardise_channels(x)
    assert torch.allclose(standardise_channels(x * scale + shift), z, atol=1e-8)
    assert torch.allclose(z.mean(1), torch.zeros(3, 4, 4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.var(1, unbiased=False), torch.ones(3, 4, 4, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("teacher,student", [("kdbench_vit_s_xs", "kdbench_resnet18_xs"),
                                             ("kdbench_mixer_b_xs", "kdbench_deit_t_xs")])
def test_fitnet_norm_loss_matches_a_direct_computation(teacher, student):
    d = make("fitnet+norm", teacher, student).eval()
    images, labels = batch()
    out, fs, ft = outputs_and_features(d, images, labels)
    specs = d.teacher.stage_specs
    expected = 0.0
    for i in (1, 2, 3, 4):
        spec = specs[i - 1]
        t = ft[i - 1]
        if t.dim() == 3:                    # tokens: drop the prefix, (B, N, C) -> (B, C, h, w)
            t = t[:, spec.prefix_tokens:].transpose(1, 2).reshape(t.shape[0], spec.channels, *spec.grid)
        t = (t - t.mean(1, keepdim=True)) / (t.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt()
        expected = expected + F.mse_loss(d.aligners[str(i)](fs[i - 1]), t)
    assert out.losses["fitnet"].item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        plain = make("fitnet", teacher, student).eval()(images, labels)
    assert plain.losses["fitnet"].item() != pytest.approx(out.losses["fitnet"].item(), rel=1e-3)


def test_fitnet_norm_column_and_opt_in_switch():
    cls = DISTILLERS.get("fitnet+norm")
    assert cls.Config().target_norm is True and cls.display_name == "FitNet (norm. target)"
    cfg = DISTILLERS.get("fitnet").Config()
    assert cfg.target_norm is False
    assert "target_norm" not in _plain(cfg, full=False)                     # opt-in: FitNet's hashes hold
    assert _plain(dataclasses.replace(cfg, target_norm=True), full=False)["target_norm"] is True
