"""Baseline distillers (FitNet, ReviewKD, OFA, DKD): losses against golden and hand-computed
values, the shared adapters, gradient flow, the frozen teacher, paper-scale parameter counts."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distillers.adapters import MapAligner, PatchMerging, StageAligner, merges_to, split_prefix, to_map
from distillers.losses import dkd_loss, hcl_loss, kd_loss, ofa_loss
from kdbench.cli import main
from kdbench.assembly import make_criterion
from kdbench.models import StageSpec, create_feature_model
from kdbench.registry import DISTILLERS

from golden_losses import INPUTS, VALUES

SPEC_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "golden-losses.json"


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


S, T, Y = t64(INPUTS["logits_student"]), t64(INPUTS["logits_teacher"]), torch.tensor(INPUTS["labels"])


def test_golden_copy_matches_the_spec_file():
    if not SPEC_GOLDEN.exists():
        pytest.skip("spec folder not present")
    golden = json.loads(SPEC_GOLDEN.read_text())
    assert golden["values"] == VALUES and golden["inputs"] == INPUTS


# ----------------------------------------------------------------------------- losses: golden values

@pytest.mark.parametrize("eps,t", [(1, 1), (1, 2), (1.5, 1), (1.5, 2)])
def test_ofa_loss_golden(eps, t):
    got = ofa_loss(S, T, Y, eps=eps, temperature=t)
    assert got.dtype == torch.float64
    assert abs(got.item() - VALUES[f"ofa_loss_eps{eps}_T{t}"]) <= 1e-9


@pytest.mark.parametrize("a,b,t", [(1, 2, 1), (1, 8, 4)])
def test_dkd_loss_golden(a, b, t):
    got = dkd_loss(S, T, Y, alpha=a, beta=b, temperature=t).item()
    assert abs(got - VALUES[f"dkd_loss_a{a}_b{b}_T{t}"]) <= 1e-9 * max(1.0, abs(got))


def test_hcl_loss_golden():
    fs, ft = t64(INPUTS["hcl_feat_student"]), t64(INPUTS["hcl_feat_teacher"])
    assert abs(hcl_loss(fs, ft).item() - VALUES["hcl_8x8"]) <= 1e-9
    assert abs(hcl_loss(fs[..., :4, :4], ft[..., :4, :4]).item() - VALUES["hcl_4x4_crop"]) <= 1e-9


# ----------------------------------------------------------------------------- losses: by hand

def _softmax(row, t=1.0):
    m = max(v / t for v in row)
    e = [math.exp(v / t - m) for v in row]
    return [x / sum(e) for x in e]


def test_ofa_loss_by_hand_both_forms():
    zs, zt, y = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], [[0.0, 2.0, 1.0], [1.0, 1.0, -2.0]], [2, 1]
    for paper in (False, True):
        total = 0.0
        for s, t, k in zip(zs, zt, y):
            ps, pt = _softmax(s), _softmax(t)
            for c in range(3):
                w = (1 + pt[c]) ** 1.5 - 1 if c == k else (pt[c] if paper else pt[c] ** 1.5)
                total -= w * math.log(ps[c])
        got = ofa_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), eps=1.5, paper_form=paper)
        assert got.item() == pytest.approx(total / 2, rel=1e-6)


def test_ofa_loss_eps1_has_the_gradient_of_kd_t1():
    s1, s2 = S.clone().requires_grad_(True), S.clone().requires_grad_(True)
    ofa_loss(s1, T, Y, eps=1.0).backward()
    kd_loss(s2, T, 1.0).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-12)
    assert ofa_loss(S, T, Y, eps=1.0, paper_form=True).item() == pytest.approx(ofa_loss(S, T, Y, eps=1.0).item())


def test_ofa_and_dkd_finite_where_probabilities_underflow_and_accept_soft_labels():
    s = torch.tensor([[200.0, -200.0, 0.0]])
    t = torch.tensor([[-200.0, 200.0, 0.0]])
    y = torch.tensor([1])
    assert torch.isfinite(ofa_loss(s, t, y, eps=1.2))
    assert torch.isfinite(dkd_loss(s, t, y, temperature=1.0))
    soft = F.one_hot(Y, 10).double() * 0.9 + 0.01
    assert ofa_loss(S, T, soft).item() == pytest.approx(ofa_loss(S, T, Y).item())
    assert dkd_loss(S, T, soft).item() == pytest.approx(dkd_loss(S, T, Y).item())


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_dkd_decomposes_kd(t):
    """Per sample, KD = TCKD + (1 - p_t,target) * NCKD (the DKD paper's identity)."""
    for i in range(S.shape[0]):
        s, tt, y = S[i:i + 1], T[i:i + 1], Y[i:i + 1]
        tckd = dkd_loss(s, tt, y, alpha=1, beta=0, temperature=t)
        nckd = dkd_loss(s, tt, y, alpha=0, beta=1, temperature=t)
        p_target = F.softmax(tt / t, dim=1)[0, y[0]]
        assert kd_loss(s, tt, t).item() == pytest.approx((tckd + (1 - p_target) * nckd).item(), rel=1e-9)


def test_hcl_by_hand_skipped_levels_do_not_halve():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, 3, 3, generator=g,
                                                                                    dtype=torch.float64)
    # H = 3: level 4 is skipped; levels 2 and 1 get weights 1/2 and 1/4; total 1.75
    pool = F.adaptive_avg_pool2d
    expected = (F.mse_loss(fs, ft) + 0.5 * F.mse_loss(pool(fs, 2), pool(ft, 2))
                + 0.25 * F.mse_loss(pool(fs, 1), pool(ft, 1))) / 1.75
    assert hcl_loss(fs, ft).item() == pytest.approx(expected.item(), rel=1e-12)
    assert hcl_loss(fs[..., :1, :1], ft[..., :1, :1]).item() == pytest.approx(
        F.mse_loss(fs[..., :1, :1], ft[..., :1, :1]).item())


# ----------------------------------------------------------------------------- adapters

@pytest.mark.parametrize("in_grid,out_grid,params", [
    ((8, 8), (8, 8), 6 * 5 + 5),            # 1x1 conv
    ((8, 8), (2, 2), 6 * 16 * 5 + 5),       # 4x4 patchify
    ((2, 2), (8, 8), 6 * 16 * 5 + 16 * 5),  # 1x1 to 16x channels, pixel shuffle
    ((7, 7), (3, 3), 6 * 5 + 5),            # no integer ratio: pooled, then 1x1
    ((3, 3), (7, 7), 6 * 5 + 5),
])
def test_map_aligner_shapes_and_parameters(in_grid, out_grid, params):
    a = MapAligner(6, in_grid, 5, out_grid)
    assert a(torch.randn(2, 6, *in_grid)).shape == (2, 5, *out_grid)
    assert sum(p.numel() for p in a.parameters()) == params


def test_unpatchify_aligner_equals_mse_against_regrouped_target():
    """MSE(pixel_shuffle(conv x), target) == MSE(conv x, pixel_unshuffle(target)): the official
    code's two spellings of the coarse-to-fine FitNet aligner are one loss."""
    a = MapAligner(4, (2, 2), 3, (4, 4))
    x, target = torch.randn(2, 4, 2, 2), torch.randn(2, 3, 4, 4)
    assert F.mse_loss(a(x), target).item() == pytest.approx(
        F.mse_loss(a.proj(x), F.pixel_unshuffle(target, 2)).item(), rel=1e-6)


def test_split_prefix_and_stage_aligner_drop_the_first_tokens():
    spec = StageSpec("tokens", 8, (3, 3), prefix_tokens=1)
    x = torch.randn(2, 10, 8)
    prefix, fmap = split_prefix(x, spec)
    assert torch.equal(prefix, x[:, :1])
    assert fmap.shape == (2, 8, 3, 3)
    assert torch.equal(fmap[:, :, 0, 1], x[:, 2])       # token 1 of the grid is x[:, 2]
    assert torch.equal(to_map(fmap, StageSpec("map", 8, (3, 3))), fmap)
    al = StageAligner(spec, StageSpec("map", 4, (6, 6)))
    assert al(x).shape == (2, 4, 6, 6)
    y = x.clone()
    y[:, 0] += 100.0                                    # the cls token does not reach the aligner
    assert torch.equal(al(x), al(y))


def test_patch_merging_odd_grid_and_merge_count():
    m = PatchMerging(4, 6)
    out, grid = m(torch.randn(2, 25, 4), (5, 5))
    assert grid == (3, 3) and out.shape == (2, 9, 6)
    assert [merges_to(g, 7) for g in (56, 28, 14, 7, 4)] == [3, 2, 1, 0, 0]


# ----------------------------------------------------------------------------- distillers on models

NEW = ["fitnet", "reviewkd", "ofa", "dkd"]
PAIRS = [("kdbench_vit_s_xs", "kdbench_resnet18_xs"), ("kdbench_swin_t_xs", "kdbench_mobilenetv2_xs"),
         ("kdbench_convnext_t_xs", "kdbench_deit_t_xs"), ("kdbench_mixer_b_xs", "kdbench_swin_p_xs"),
         ("kdbench_resnet50_xs", "kdbench_resmlp_s12_xs")]


def make(name, teacher, student, **cfg):
    torch.manual_seed(0)
    s = create_feature_model(student, num_classes=10, in_chans=3, img_size=16)
    t = create_feature_model(teacher, num_classes=10, in_chans=3, img_size=16)
    cls = DISTILLERS.get(name)
    return cls(s, t, cls.Config(**cfg), num_classes=10, criterion=make_criterion(0.0))


def batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("teacher,student", PAIRS)
@pytest.mark.parametrize("name", NEW)
def test_gradient_flow_and_frozen_teacher(name, teacher, student):
    d = make(name, teacher, student).train()
    assert not d.teacher.training and all(not p.requires_grad for p in d.teacher.parameters())
    out = d(*batch())
    assert out.logits.shape == (4, 10)
    expected = {"fitnet": {"gt", "fitnet"}, "reviewkd": {"gt", "hcl"}, "ofa": {"gt", "kd", "ofa"},
                "dkd": {"gt", "dkd"}}[name]
    assert set(out.losses) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    for n, p in d.extra_named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"extra parameter {n} got no gradient"
    assert (d.num_extra_params > 0) == (name != "dkd")
    student_grads = [p.grad for p in d.student.parameters()]
    assert all(g is not None for g in student_grads)


def test_feature_losses_reach_the_student_through_the_aligners():
    for name, key in (("fitnet", "fitnet"), ("reviewkd", "hcl"), ("ofa", "ofa")):
        d = make(name, "kdbench_vit_s_xs", "kdbench_resnet18_xs").train()
        d(*batch())
        out = d(*batch())
        out.losses[key].backward()
        stem = d.student.model.conv1.weight     # (block convs start at zero gain: timm's zero-init last BN)
        assert stem.grad is not None and stem.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", NEW)
def test_teacher_batchnorm_statistics_unchanged_after_training_steps(name):
    d = make(name, "kdbench_resnet50_xs", "kdbench_deit_t_xs")
    before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    assert any("running_mean" in k for k in before)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.05)
    d.train()
    for step in range(2):
        out = d(*batch(step))
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"{name}: teacher state {k} changed"


def outputs_and_features(d, images, labels):
    """A distiller's output on a batch beside its student's and teacher's stage features, no graph."""
    with torch.no_grad():
        return d(images, labels), d.student(images)[1], d.teacher(images)[1]


def test_fitnet_matches_a_direct_computation_and_kd_switch():
    d = make("fitnet", "kdbench_vit_s_xs", "kdbench_resnet18_xs").eval()
    images, labels = batch()
    out, fs, ft = outputs_and_features(d, images, labels)
    specs = d.teacher.stage_specs
    expected = sum(F.mse_loss(d.aligners[str(i)](fs[i - 1]), ft[i - 1][:, specs[i - 1].prefix_tokens:]
                              .transpose(1, 2).reshape(4, specs[i - 1].channels, *specs[i - 1].grid))
                   for i in (1, 2, 3, 4))
    assert out.losses["fitnet"].item() == pytest.approx(expected.item(), rel=1e-5)
    d2 = make("fitnet", "kdbench_vit_s_xs", "kdbench_resnet18_xs", kd_weight=0.5, stages=(2, 4)).eval()
    with torch.no_grad():
        out2 = d2(images, labels)
    assert set(d2.aligners) == {"2", "4"} and "kd" in out2.losses


def test_ofa_eps_per_stage_and_branch_structure():
    d = make("ofa", "kdbench_convnext_t_xs", "kdbench_deit_t_xs", eps=(1.0, 1.2, 1.4, 1.6, 1.5)).eval()
    assert [d.cfg.eps_of(k) for k in range(5)] == [1.0, 1.2, 1.4, 1.6, 1.5]
    images, labels = batch()
    with torch.no_grad():
        out = d(images, labels)
        s_logits, feats = d.student(images)
        t_logits = d.teacher.logits(images)
        branch = sum(ofa_loss(d.branches[str(s)](feats[s - 1]), t_logits, labels, eps=e)
                     for s, e in zip((1, 2, 3, 4), (1.0, 1.2, 1.4, 1.6)))
    assert out.losses["kd"].item() == pytest.approx(ofa_loss(s_logits, t_logits, labels, eps=1.5).item(), rel=1e-5)
    assert out.losses["ofa"].item() == pytest.approx(branch.item(), rel=1e-5)
    # the DeiT branch reads its feature from the cls token: changing only patch tokens changes the output
    # through the blocks, changing the cls token changes it directly
    spec = d.student.stage_specs[3]
    x = torch.randn(2, spec.num_tokens, spec.channels)
    y = x.clone()
    y[:, 0] += 1.0
    br = d.branches["4"]
    assert not torch.allclose(br(x), br(y))
    assert len(br.blocks) == 1 and len(d.branches["1"].blocks) == 3
    with pytest.raises(ValueError, match=r"bad value \[1.0, 1.0\] for distiller.eps: must be 1 or 5 values"):
        DISTILLERS.get("ofa").Config(eps=(1.0, 1.0))


def test_reviewkd_warmup_ramps_the_feature_loss():
    d = make("reviewkd", "kdbench_vit_s_xs", "kdbench_resnet18_xs", warmup_fraction=0.5).eval()
    images, labels = batch()
    values = []
    for epoch in range(4):
        d.set_progress(epoch, 4)
        with torch.no_grad():
            values.append(d(images, labels).losses["hcl"].item())
    assert values[0] == pytest.approx(values[1] / 2, rel=1e-5)
    assert values[1] == pytest.approx(values[2], rel=1e-5) == values[3]


def test_dkd_weights_and_warmup():
    d = make("dkd", "kdbench_vit_s_xs", "kdbench_resnet18_xs", alpha=0.5, beta=4.0, temperature=2.0,
             warmup_epochs=2).eval()
    images, labels = batch()
    with torch.no_grad():
        d.set_progress(0, 10)
        out = d(images, labels)
        s, t = d.student.logits(images), d.teacher.logits(images)
    assert out.losses["dkd"].item() == pytest.approx(0.5 * dkd_loss(s, t, labels, 0.5, 4.0, 2.0).item(), rel=1e-5)


# ----------------------------------------------------------------------------- paper-scale parameter counts

# algorithms.md §2.3 (heterogeneous FitNet, PAT repo) and §2.5 (OFA), CIFAR-100, measured on the official code.
PAPER_EXTRA = {
    ("swin_tiny_patch4_window7_224", "resnet18"): {"ofa": 1.63, "fitnet": 0.52},
    ("vit_small_patch16_224", "resnet18"): {"ofa": 1.19, "fitnet": 1.48},
    ("mixer_b16_224", "resnet18"): {"ofa": 1.63, "fitnet": 2.95},
    ("swin_tiny_patch4_window7_224", "mobilenetv2_100"): {"ofa": 2.53, "fitnet": 1.03},
    ("vit_small_patch16_224", "mobilenetv2_100"): {"ofa": 2.53, "fitnet": 2.20},
    ("mixer_b16_224", "mobilenetv2_100"): {"ofa": 2.53, "fitnet": 4.40},
    ("convnext_tiny", "deit_tiny_patch16_224"): {"ofa": 3.78, "fitnet": 1.11},
    ("mixer_b16_224", "deit_tiny_patch16_224"): {"ofa": 3.78},     # the official FitNet crashes here
    ("convnext_tiny", "swin_pico_patch4_window7_224"): {"ofa": 14.86, "fitnet": 0.39},
    ("mixer_b16_224", "swin_pico_patch4_window7_224"): {"ofa": 14.86, "fitnet": 2.22},
    ("convnext_tiny", "resmlp_12_224"): {"ofa": 14.94, "fitnet": 2.22},
    ("swin_tiny_patch4_window7_224", "resmlp_12_224"): {"ofa": 14.94, "fitnet": 2.22},
}


def test_paper_scale_extra_parameters_via_bench_json(capsys):
    assert main(["bench", "--preset", "paper", "--pair", "all", "--distillers", "ofa,fitnet",
                 "--steps", "0", "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 24
    for row in rows:
        want = PAPER_EXTRA[(row["teacher"], row["student"])].get(row["distiller"])
        assert row["img_per_s"] is None and row["ratio_to_kd"] is None
        if want is not None:
            assert row["extra_params"] / 1e6 == pytest.approx(want, rel=0.01), row
    r18 = next(r for r in rows if r["student"] == "resnet18")
    assert r18["student_params"] / 1e6 == pytest.approx(11.23, rel=0.01)


def test_bench_times_steps_and_reports_the_ratio_to_kd(capsys):
    assert main(["bench", "--preset", "smoke", "--pair", "kdbench_vit_s_xs:kdbench_resnet18_xs",
                 "--distillers", "fitnet,dkd", "--steps", "2", "--warmup", "1", "--batch-size", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["distiller"] for r in rows] == ["fitnet", "dkd"]       # kd was timed as the reference only
    for r in rows:
        assert r["img_per_s"] > 0 and r["step_ms"] > 0 and r["ratio_to_kd"] > 0 and r["batch_size"] == 8
        assert set(r) >= {"distiller", "img_per_s", "step_ms", "peak_mem_mb", "student_params", "extra_params",
                          "ratio_to_kd"}
        assert r["train_flops_per_img"] > 0 and r["peak_tflops"] > 0           # issue 18: work and utilisation
        assert r["achieved_tflops"] == pytest.approx(r["train_flops_per_img"] * r["img_per_s"] / 1e12, rel=1e-3)
        assert r["peak_fraction"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"], rel=1e-2, abs=1e-4)
    assert main(["bench", "--preset", "smoke", "--pair", "all", "--distillers", "nope", "--steps", "0"]) == 2
    assert "unknown distiller 'nope'" in capsys.readouterr().err


def test_bench_passes_the_compile_flag_through(capsys):
    """`--set compile=true` reaches the benchmarked runs (it was once dropped silently)."""
    args = ["bench", "--preset", "smoke", "--pair", "kdbench_vit_s_xs:kdbench_resnet18_xs", "--distillers", "kd",
            "--steps", "0", "--json"]
    assert main(args) == 0
    assert [r["compile"] for r in json.loads(capsys.readouterr().out)] == [False]
    assert main(args + ["--set", "compile=true"]) == 0
    assert [r["compile"] for r in json.loads(capsys.readouterr().out)] == [True]
    assert main(args + ["--set", "compile=maybe"]) == 2
    assert "true, false or auto" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["fitnet", "reviewkd", "ofa", "pat"])
def test_parameter_counts_on_the_meta_device_equal_a_real_build(capsys, name):
    """`bench --steps 0` counts on the meta device (no weights); the counts are a real build's."""
    from kdbench.config import load_preset
    from kdbench.assembly import build_distiller
    from kdbench.grid import expand_runs, resolve_pairs
    preset = load_preset("smoke")
    pair = "kdbench_swin_t_xs:kdbench_mobilenetv2_xs"
    assert main(["bench", "--preset", "smoke", "--pair", pair, "--distillers", name, "--steps", "0", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    run = expand_runs(preset, resolve_pairs(pair, preset), [name], [0], data=preset.data,
                      teacher_cfg=preset.teacher, overrides={})[0]
    teacher = create_feature_model(run.teacher, num_classes=10, in_chans=3, img_size=16)
    real = build_distiller(run, num_classes=10, in_chans=3, img_size=16, teacher=teacher, device=torch.device("cpu"))
    assert next(real.parameters()).device.type == "cpu"
    assert (row["student_params"], row["extra_params"]) == (real.num_student_params, real.num_extra_params)
    assert row["extra_params"] > 0


def test_bench_overhead_times_engine_bare_and_plain_loops(capsys):
    """Issue 18: the engine's loop, the bare loop and (for KD) a plain-timm loop, side by side."""
    args = ["bench", "--overhead", "--preset", "smoke", "--pair", "kdbench_vit_s_xs:kdbench_resnet18_xs",
            "--distillers", "kd,fitnet", "--steps", "2", "--rounds", "2", "--batch-size", "8", "--device", "cpu"]
    assert main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["distiller"] for r in rows] == ["kd", "fitnet"]
    for r in rows:
        assert r["engine_ms"] > 0 and r["bare_ms"] > 0 and r["batch_size"] == 8
        assert r["engine_over_bare"] == pytest.approx(r["engine_ms"] / r["bare_ms"], rel=0.01)
        assert all(len(v) == 2 for v in r["rounds_ms"].values())
    kd, fitnet = rows
    assert kd["plain_ms"] > 0 and kd["kd_over_plain"] == pytest.approx(kd["bare_ms"] / kd["plain_ms"], rel=0.01)
    assert fitnet["plain_ms"] is None and fitnet["kd_over_plain"] is None
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.startswith("| pair | distiller |") and table.count("\n") == 4
    assert main(args[:-2] + ["--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err
