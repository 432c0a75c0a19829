"""Fidelity to the official code where an independent check found kdbench apart from it (issue 19):
the init of PAT's feedback aligner and of FitNet's aligners (the official `init_weights`), and
mdistiller's fifth, pooled ReviewKD level with its ABF width min(512, C_last)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillers.fitnet import FitNet, FitNetConfig
from distillers.pat_prompts import PromptBlock
from distillers.reviewkd import ReviewKD
from kdbench.config import load_preset
from kdbench.assembly import build_distiller, make_criterion
from kdbench.grid import expand_runs, resolve_pairs
from kdbench.models import StageSpec, create_feature_model


def assert_normal(w: torch.Tensor, std: float):
    """Zero-mean normal with this std: not PyTorch's default (uniform, whose tails stop at 1.73 std)."""
    w = w.detach().double().flatten()
    assert w.std().item() == pytest.approx(std, rel=0.03)
    assert abs(w.mean().item()) < 5 * std / math.sqrt(w.numel())
    assert 0.040 < (w.abs() > 2 * std).double().mean().item() < 0.051      # normal: 4.55 %


def assert_default_bias(conv: nn.Conv2d):
    """PyTorch's default conv bias, uniform within 1/sqrt(fan_in): what `init_weights` leaves."""
    bound = 1 / math.sqrt(conv.weight[0].numel())
    assert conv.bias.abs().max().item() <= bound and conv.bias.abs().max().item() > bound / 2


# ----------------------------------------------------------------------------- PAT: feedback aligner

def test_pat_feedback_aligner_has_the_official_init():
    """Officially `get_projector_module` builds it and applies `init_weights`: BN (1, 0), the 1x1
    conv kaiming-normal over fan_out (its output channels, the stage input's width)."""
    torch.manual_seed(0)
    stage_in, stage_out = StageSpec("map", 384, (14, 14)), StageSpec("map", 768, (7, 7))   # ConvNeXt-T stage 4
    block = PromptBlock(stage_in, stage_out, gate_only=False, with_feedback=True)
    bn, conv = block.fb_align
    assert torch.equal(bn.weight, torch.ones(768)) and torch.equal(bn.bias, torch.zeros(768))
    assert conv.weight.shape == (384, 768, 1, 1) and conv.bias is None
    assert_normal(conv.weight, math.sqrt(2 / 384))


# ----------------------------------------------------------------------------- FitNet: aligners

class Specs(nn.Module):
    """A stand-in member: only the stage specs, which is all a FitNet's construction reads."""

    def __init__(self, specs):
        super().__init__()
        self.stage_specs = specs


R18 = [StageSpec("map", c, (g, g)) for c, g in ((64, 56), (128, 28), (256, 14), (512, 7))]
CONVNEXT_T = [StageSpec("map", c, (g, g)) for c, g in ((96, 56), (192, 28), (384, 14), (768, 7))]
VIT_S = [StageSpec("tokens", 384, (14, 14), prefix_tokens=1)] * 4
DEIT_T = [StageSpec("tokens", 192, (14, 14), prefix_tokens=1)] * 4


def fitnet(student, teacher):
    torch.manual_seed(0)
    return FitNet(Specs(student), Specs(teacher), FitNetConfig(), num_classes=100, criterion=make_criterion(0.0))


def test_fitnet_map_student_aligners_are_kaiming_normal_fan_out():
    """ResNet18 -> ViT-S: officially PatchEmbed convs (stages 1, 2), a 1x1 conv (3) and a 1x1 conv
    to 4 x 384 before unpatchify (4); `init_weights`: kaiming-normal over each conv's fan_out,
    biases left at PyTorch's default."""
    d = fitnet(R18, VIT_S)
    for stage, fan_out in ((1, 384 * 16), (2, 384 * 4), (3, 384), (4, 384 * 4)):
        proj = d.aligners[str(stage)].align.proj
        assert proj.weight.shape[0] * proj.weight[0, 0].numel() == fan_out
        assert_normal(proj.weight, math.sqrt(2 / fan_out))
        assert_default_bias(proj)


def test_fitnet_token_student_aligners_follow_the_official_modules():
    """DeiT-T -> ConvNeXt-T: officially Linear layers before unpatchify (stages 1-3):
    trunc-normal(0.02), zero bias; stage 4 merges 2x2 tokens and applies a 1x1 conv, whose
    fan_out is the teacher's 768 channels (not 768 x 2 x 2, this patchify conv's)."""
    d = fitnet(DEIT_T, CONVNEXT_T)
    for stage in (1, 2, 3):
        proj = d.aligners[str(stage)].align.proj
        assert_normal(proj.weight, 0.02)
        assert torch.equal(proj.bias, torch.zeros_like(proj.bias))
    proj = d.aligners["4"].align.proj
    assert proj.weight.shape == (768, 192, 2, 2)
    assert_normal(proj.weight, math.sqrt(2 / 768))
    assert_default_bias(proj)


def test_fitnet_token_to_token_aligners_are_linear_init():
    d = fitnet(DEIT_T, VIT_S)
    for proj in (a.align.proj for a in d.aligners.values()):
        assert_normal(proj.weight, 0.02)
        assert torch.equal(proj.bias, torch.zeros_like(proj.bias))


# ----------------------------------------------------------------------------- ReviewKD: mdistiller's levels

def make_reviewkd(teacher, student, **cfg):
    torch.manual_seed(0)
    s = create_feature_model(student, num_classes=10, in_chans=3, img_size=16)
    t = create_feature_model(teacher, num_classes=10, in_chans=3, img_size=16)
    return ReviewKD(s, t, ReviewKD.Config(**cfg), num_classes=10, criterion=make_criterion(0.0))


PAIRS = [("kdbench_vit_s_xs", "kdbench_resnet18_xs"), ("kdbench_convnext_t_xs", "kdbench_deit_t_xs")]


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_reviewkd_has_five_levels_and_stage_4_fuses_the_pooled_one(teacher, student):
    d = make_reviewkd(teacher, student).eval()
    assert d.order == ["pool", "4", "3", "2", "1"]
    pool, s_last, t_last = d.abfs["pool"], d.student.stage_specs[-1], d.teacher.stage_specs[-1]
    assert pool.att is None and all(d.abfs[k].att is not None for k in "4321")
    assert pool.reduce[0].in_channels == s_last.channels and pool.out[0].proj.out_channels == t_last.channels
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = d(x, torch.zeros(2, dtype=torch.long)).losses["hcl"]
        pool.reduce[0].weight.mul_(2)                        # changes only the pooled level's output...
        s_map = d.levels(d.student(x)[1], d.student.stage_specs)
        after = d(x, torch.zeros(2, dtype=torch.long)).losses["hcl"]
    assert after != before
    res = pool(s_map["pool"])[1]                             # ...and the residual stage 4 fuses with
    assert not torch.equal(d.abfs["4"](s_map["4"], res)[0], d.abfs["4"](s_map["4"], res * 0)[0])
    assert make_reviewkd(teacher, student, pooled_level=False).order == ["4", "3", "2", "1"]


def mdistiller_hcl(fs, ft):
    """mdistiller's `hcl_loss` for one pair, written out."""
    loss, cnt, tot = F.mse_loss(fs, ft), 1.0, 1.0
    for k in (4, 2, 1):
        if k < fs.shape[2]:
            cnt /= 2
            loss = loss + cnt * F.mse_loss(F.adaptive_avg_pool2d(fs, k), F.adaptive_avg_pool2d(ft, k))
            tot += cnt
    return loss / tot


def grid_map(f, spec):
    if spec.layout == "map":
        return f
    return f[:, spec.prefix_tokens:].transpose(1, 2).reshape(f.shape[0], spec.channels, *spec.grid)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_reviewkd_loss_equals_a_hand_built_review_path(teacher, student):
    d = make_reviewkd(teacher, student, warmup_fraction=0.0).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 3, 16, 16, generator=g), torch.randint(0, 10, (3,), generator=g)
    with torch.no_grad():
        got = d(x, y).losses["hcl"]
        (_, fs), (_, ft) = d.student(x), d.teacher(x)
        ss, ts = d.student.stage_specs, d.teacher.stage_specs
        s_maps = [grid_map(f, s) for f, s in zip(fs, ss)]
        t_maps = [grid_map(f, s) for f, s in zip(ft, ts)]
        abf = d.abfs["pool"]
        mid = abf.reduce(s_maps[3].mean((2, 3), keepdim=True))
        want = mdistiller_hcl(abf.out(mid), t_maps[3].mean((2, 3), keepdim=True))
        for stage in (4, 3, 2, 1):
            abf, s = d.abfs[str(stage)], s_maps[stage - 1]
            z = abf.reduce(s)
            up = F.interpolate(mid, size=s.shape[-2:], mode="nearest")
            a = torch.sigmoid(abf.att[0](torch.cat([z, up], 1)))
            mid = z * a[:, 0:1] + up * a[:, 1:2]
            want = want + mdistiller_hcl(abf.out(mid), t_maps[stage - 1])
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


STUDENT_LAST = {"resnet18": 512, "mobilenetv2_100": 1280, "deit_tiny_patch16_224": 192,
                "swin_pico_patch4_window7_224": 384, "resmlp_12_224": 384}


def test_reviewkd_abf_width_is_mdistillers_at_paper_scale():
    """No preset sets `mid_channels` at paper scale: the default resolves to min(512, C_last)."""
    preset = load_preset("paper")
    runs = expand_runs(preset, resolve_pairs("all", preset), ["reviewkd"], [0], data=preset.data,
                       teacher_cfg=preset.teacher, overrides={})
    by_student = {r.student: r for r in runs}
    assert set(by_student) == set(STUDENT_LAST)
    meta = torch.device("meta")
    for student, run in by_student.items():
        assert run.distiller_config.mid_channels is None and run.distiller_config.pooled_level
        with meta:
            teacher = create_feature_model(run.teacher, num_classes=100, in_chans=3, img_size=224)
            d = build_distiller(run, num_classes=100, in_chans=3, img_size=224, teacher=teacher, device=meta)
        assert d.student.stage_specs[-1].channels == STUDENT_LAST[student]
        assert {a.reduce[0].out_channels for a in d.abfs.values()} == {min(512, STUDENT_LAST[student])}


def test_init_weights_leaves_conv_bias_at_the_pytorch_default():
    """The official init_weights touches only a conv's weight (OFA's stage-4 1x1 conv has a bias)."""
    from torch import nn
    from distillers.adapters import init_weights
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 256, 1, bias=True)
    before = conv.bias.detach().clone()
    conv.apply(init_weights)
    assert torch.equal(conv.bias, before) and before.abs().max() > 0
