"""RSD and DIST (issue 31): losses against the official code's float64 golden values and by hand,
RSD's projector and its paper-scale parameter count, the pooled feature both read; OFA's token-branch
blocks pinned to the official code's timm 0.6.5 defaults."""

import json

import pytest
import torch
import torch.nn.functional as F

from distillers.losses import dist_loss, kd_loss, rsd_loss
from distillers.ofa import OFAConfig, vit_block
from distillers.rsd import RSDConfig, rsd_projector
from kdbench.cli import main
from kdbench.assembly import make_criterion
from kdbench.models import create_feature_model
from kdbench.registry import DISTILLERS

from golden_losses import INPUTS, VALUES


def t64(name):
    return torch.tensor(INPUTS[name], dtype=torch.float64)


S, T = t64("logits_student"), t64("logits_teacher")


# ----------------------------------------------------------------------------- DIST

@pytest.mark.parametrize("beta,gamma,t", [(1, 1, 1), (1, 1, 4), (2, 0.5, 1)])
def test_dist_loss_golden(beta, gamma, t):
    got = dist_loss(S, T, beta, gamma, t)
    assert got.dtype == torch.float64
    assert abs(got.item() - VALUES[f"dist_loss_b{beta}_g{gamma}_T{t}"]) <= 1e-9 * max(1.0, abs(got.item()))


def test_dist_loss_by_hand_and_its_invariances():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=torch.float64)
    z_t = p.log()
    assert dist_loss(z_t.clone(), z_t, 1, 1, 1).item() == pytest.approx(0.0, abs=1e-5)     # the 1e-8 in the correlation
    # the student's probabilities reversed per row: row correlations -1 -> inter term 2
    z_s = p.flip(1).log()
    inter = dist_loss(z_s, z_t, 1, 0, 1).item()
    q = p.flip(1)
    pc, qc = p - p.mean(1, keepdim=True), q - q.mean(1, keepdim=True)
    r = ((pc * qc).sum(1) / (pc.norm(dim=1) * qc.norm(dim=1))).mean().item()
    assert inter == pytest.approx(1 - r, abs=1e-7)
    # relabelling the classes on both sides changes nothing
    perm = torch.tensor([2, 0, 1])
    assert dist_loss(z_s[:, perm], z_t[:, perm], 1, 1, 1).item() == pytest.approx(dist_loss(z_s, z_t, 1, 1, 1).item())


# ----------------------------------------------------------------------------- RSD

@pytest.mark.parametrize("kappa", [0.01, 0.1])
def test_rsd_loss_golden(kappa):
    got = rsd_loss(t64("rsd_feat_student"), t64("rsd_feat_teacher"), kappa)
    assert got.dtype == torch.float64
    assert abs(got.item() - VALUES[f"rsd_loss_kappa{kappa}"]) <= 1e-9 * max(1.0, abs(got.item()))


def test_rsd_loss_by_hand():
    """Identical, already decorrelated features: C = I, loss 0; one feature column negated: its
    diagonal entry is -1, (−1 − 1)^2 = 4; kappa weighs only the off-diagonal part."""
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert rsd_loss(z, z, 0.01).item() == pytest.approx(0.0, abs=1e-8)
    flipped = z * torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert rsd_loss(flipped, z, 0.5).item() == pytest.approx(4.0, rel=1e-4)      # (1 + 1e-5)^-2 of the eps
    y = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    # teacher columns both equal to z's first: C = [[1, 0], [1, 0]], (C - I)^2 = [[0, 0], [1, 1]]
    for kappa in (0.0, 0.3, 1.0):
        assert rsd_loss(z, y, kappa).item() == pytest.approx(1.0 + kappa * 1.0, rel=1e-4)


def test_rsd_projector_is_the_official_shape_and_init():
    torch.manual_seed(0)
    p = rsd_projector(512, 768, 2)
    kinds = [type(m).__name__ for m in p]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    assert p[0].bias is None and p[3].bias is None and p[2].approximate == "none"
    assert tuple(p[0].weight.shape) == (1024, 512) and tuple(p[3].weight.shape) == (768, 1024)
    assert p[0].weight.std().item() == pytest.approx(0.02, rel=0.05) and abs(p[0].weight.mean().item()) < 1e-3
    assert torch.equal(p[1].weight, torch.ones(1024)) and torch.equal(p[1].bias, torch.zeros(1024))


def test_rsd_paper_scale_extra_parameters_equal_the_official_count(capsys):
    """The official projector (distillers/rsd.py of spacewanderx/RSD) on stage_info(-1): ResNet18's 512
    and Swin-T's 768 features, gamma 2: Linear(512, 1024, no bias) + BatchNorm1d(1024) + Linear(1024, 768,
    no bias) = 524,288 + 2,048 + 786,432 = 1,312,768 parameters."""
    assert main(["bench", "--preset", "paper", "--pair", "swin_tiny_patch4_window7_224:resnet18",
                 "--distillers", "rsd,dist", "--steps", "0", "--json", "--device", "cpu"]) == 0
    rows = {r["distiller"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["rsd"]["extra_params"] == 512 * 1024 + 2 * 1024 + 1024 * 768 == 1_312_768
    assert rows["dist"]["extra_params"] == 0


def test_rsd_and_dist_losses_in_a_distiller_are_the_pure_functions():
    torch.manual_seed(0)
    student = create_feature_model("kdbench_resnet18_xs", num_classes=10, in_chans=3, img_size=16)
    teacher = create_feature_model("kdbench_vit_s_xs", num_classes=10, in_chans=3, img_size=16)
    images, labels = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    rsd = DISTILLERS.get("rsd")(student, teacher, RSDConfig(rsd_weight=0.5, kappa=0.2), num_classes=10,
                                criterion=make_criterion(0.0)).train()
    out = rsd(images, labels)
    assert set(out.losses) == {"gt", "rsd"}
    logits, feature = student.pooled(images)
    with torch.no_grad():
        _, target = teacher.pooled(images)
    torch.testing.assert_close(out.losses["rsd"], 0.5 * rsd_loss(rsd.projector(feature), target, 0.2))
    torch.testing.assert_close(out.logits, logits)
    dist = DISTILLERS.get("dist")(student, teacher, DISTILLERS.get("dist").Config(temperature=2.0), num_classes=10,
                                  criterion=make_criterion(0.0))
    out = dist(images, labels)
    torch.testing.assert_close(out.losses["dist"], dist_loss(student.logits(images), teacher.logits(images), 1, 1, 2.0))
    assert kd_loss(S, T, 1.0).item() != pytest.approx(dist_loss(S, T).item())     # a different objective


@pytest.mark.parametrize("member", ["kdbench_resnet18_xs", "kdbench_mobilenetv2_xs", "kdbench_convnext_t_xs",
                                    "kdbench_deit_t_xs", "kdbench_swin_p_xs", "kdbench_mixer_b_xs",
                                    "kdbench_resmlp_s12_xs", "kdbench_vit_s_xs"])
def test_pooled_feature_is_what_the_classifier_reads(member):
    torch.manual_seed(0)
    fm = create_feature_model(member, num_classes=7, in_chans=3, img_size=16).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        logits, feature = fm.pooled(x)
        torch.testing.assert_close(logits, fm.model(x))
    assert feature.shape == (3, fm.num_features)


# ----------------------------------------------------------------------------- OFA's pinned blocks

def _timm065_block(b, x):
    """timm 0.6.5's ViT `Block.forward`, written out (torch LayerNorm eps 1e-5, softmax attention)."""
    def ln(v, m):
        return F.layer_norm(v, (v.shape[-1],), m.weight, m.bias, 1e-5)
    B, N, C = x.shape
    H = b.attn.num_heads
    qkv = F.linear(ln(x, b.norm1), b.attn.qkv.weight).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (C // H) ** -0.5).softmax(dim=-1)
    x = x + F.linear((attn @ qkv[2]).transpose(1, 2).reshape(B, N, C), b.attn.proj.weight, b.attn.proj.bias)
    h = F.gelu(F.linear(ln(x, b.norm2), b.mlp.fc1.weight, b.mlp.fc1.bias))
    return x + F.linear(h, b.mlp.fc2.weight, b.mlp.fc2.bias)


def test_ofa_token_blocks_equal_timm_065s_block_in_float64():
    torch.manual_seed(0)
    block = vit_block(32, 4).double().eval()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _timm065_block(block, x), rtol=0, atol=1e-12)
    assert sum(p.numel() for p in block.parameters()) == 4 * 32 + 3 * 32 * 32 + 32 * 32 + 32 + 2 * 4 * 32 * 32 + 4 * 32 + 32
    old = vit_block(32, 4, norm_eps=1e-6).double().eval()
    old.load_state_dict(block.state_dict())
    with torch.no_grad():
        assert not torch.allclose(old(x), block(x), rtol=0, atol=1e-12)       # the eps is what differed


def test_ofa_branches_use_the_configured_eps_and_it_is_hashed():
    assert OFAConfig().branch_norm_eps == 1e-5
    torch.manual_seed(0)
    student = create_feature_model("kdbench_deit_t_xs", num_classes=10, in_chans=3, img_size=16)
    teacher = create_feature_model("kdbench_convnext_t_xs", num_classes=10, in_chans=3, img_size=16)
    ofa = DISTILLERS.get("ofa")(student, teacher, OFAConfig(final_grid=2), num_classes=10, criterion=make_criterion(0.0))
    norms = [m for m in ofa.branches.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)
