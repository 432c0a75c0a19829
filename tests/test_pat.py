"""PAT: prompts through pre-hooks (a zero gate is exact), gradient flow, feedback state,
resume, the faithful switch item by item, ablation switches, paper-scale parameter counts."""

import json

import pytest
import torch

from distillers.pat import FAITHFUL_ITEMS, PAT, PATConfig, PromptBlock, RegionProjector
from kdbench.context import RunContext, SILENT
from kdbench.cli import main
from kdbench.config import load_preset
from kdbench.assembly import make_criterion
from kdbench.engine import Trainer, resolve_device
from kdbench.grid import expand_runs, resolve_pairs
from kdbench.models import StageSpec, create_feature_model

SMALL = dict(dim=32, num_queries=16, heads=4)
TEACHERS = ["kdbench_swin_t_xs", "kdbench_vit_s_xs", "kdbench_mixer_b_xs", "kdbench_convnext_t_xs",
            "kdbench_resnet50_xs", "kdbench_mobilenetv2_xs"]
TOKEN_TEACHERS = {"kdbench_swin_t_xs", "kdbench_vit_s_xs", "kdbench_mixer_b_xs"}


def make(teacher="kdbench_vit_s_xs", student="kdbench_deit_t_xs", **cfg):
    torch.manual_seed(0)
    s = create_feature_model(student, num_classes=10, in_chans=3, img_size=16)
    t = create_feature_model(teacher, num_classes=10, in_chans=3, img_size=16)
    return PAT(s, t, PATConfig(**{**SMALL, **cfg}), num_classes=10, criterion=make_criterion(0.0))


def batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def prompted(d, x, feedback=None):
    feedback = feedback or {}
    with torch.no_grad(), d.teacher.stage_inputs({s - 1: d._prompt_fn(s, feedback.get(s)) for s in (1, 2, 3, 4)}):
        return d.teacher(x)


# ----------------------------------------------------------------------------- the zero gate

@pytest.mark.parametrize("teacher", TEACHERS)
def test_zero_gate_leaves_every_teacher_family_exactly_unchanged(teacher):
    d = make(teacher).eval()
    x, _ = batch()
    with torch.no_grad():
        clean_logits, clean_feats = d.teacher(x)
    fb = {s: torch.randn(4, *d.teacher.stage_specs[s - 1].shape[-3:]) if d.teacher.stage_specs[s - 1].layout == "map"
          else None for s in (1, 2, 3, 4)}
    for feedback in ({}, {k: v for k, v in fb.items() if v is not None}):
        logits, feats = prompted(d, x, feedback)
        assert torch.equal(logits, clean_logits)
        assert all(torch.equal(a, b) for a, b in zip(feats, clean_feats))
    # a non-zero gate does change the teacher
    for block in d.prompts.values():
        torch.nn.init.constant_(block.beta, 0.5)
    logits, feats = prompted(d, x)
    assert not torch.allclose(feats[-1], clean_feats[-1])       # (Mixer's head starts at zero: compare features)


@pytest.mark.parametrize("teacher", TEACHERS)
def test_faithful_zero_gate_scrambles_token_teachers_only(teacher):
    d = make(teacher, faithful=True).eval()
    x, _ = batch()
    with torch.no_grad():
        clean_logits, clean_feats = d.teacher(x)
    logits, feats = prompted(d, x)
    unchanged = torch.equal(logits, clean_logits) and all(torch.equal(a, b) for a, b in zip(feats, clean_feats))
    assert unchanged == (teacher not in TOKEN_TEACHERS)       # algorithms.md §3.6 item 1


# ----------------------------------------------------------------------------- gradient flow

def test_gradients_reach_prompts_raa_and_aligners_never_the_teacher():
    d = make("kdbench_convnext_t_xs").train()
    d.set_progress(0, 1)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1)
    before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    for step in range(3):
        out = d(*batch(step))
        assert set(out.losses) == {"gt", "kd", "pat_fd", "pat_reg"}
        opt.zero_grad()
        sum(out.losses.values()).backward()
        if step == 0:
            # beta starts at 0: it moves first; the blocks behind it get no gradient yet
            assert all(b.beta.grad.abs().item() > 0 for b in d.prompts.values())
            assert all(p.grad is None or p.grad.abs().sum() == 0 for b in d.prompts.values()
                       for p in b.prompt.parameters())
        opt.step()
    grads = dict(d.named_parameters())
    for name in ("raa.q.weight", "raa.kv.weight", "raa.projectors.0.conv.weight", "aligners.3.proj.weight",
                 "prompts.2.prompt.0.weight", "prompts.2.fuse.1.weight", "prompts.2.fb_align.1.weight"):
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in d.teacher.state_dict().items())


def test_teacher_batchnorm_statistics_unchanged_corrected_but_not_faithful():
    shared = create_feature_model("kdbench_resnet50_xs", num_classes=10, in_chans=3, img_size=16)
    shared_before = {k: v.clone() for k, v in shared.state_dict().items()}
    faithful = PAT(create_feature_model("kdbench_deit_t_xs", num_classes=10, in_chans=3, img_size=16), shared,
                   PATConfig(**SMALL, faithful=True), num_classes=10, criterion=make_criterion(0.0)).train()
    faithful.set_progress(0, 1)
    faithful(*batch())
    # the official first-step drift happens on the run's private copy, saved with its checkpoint
    assert all(torch.equal(v, shared_before[k]) for k, v in shared.state_dict().items())
    assert any(k.startswith("teacher.") and "running_mean" in k for k in faithful.trainable_state())
    for faithful, changed in ((False, False), (True, True)):
        d = make("kdbench_resnet50_xs", faithful=faithful).train()
        before = {k: v.clone() for k, v in d.teacher.state_dict().items() if "running_mean" in k}
        d.set_progress(0, 1)
        d(*batch())
        d(*batch(1))
        after = {k: v for k, v in d.teacher.state_dict().items() if "running_mean" in k}
        assert any(not torch.equal(after[k], before[k]) for k in before) == changed
        assert not d.teacher.training


# ----------------------------------------------------------------------------- the faithful items one by one

def _probes(items):
    """For each faithful item, whether its behaviour is observed under `faithful_items=items`."""
    seen = {}
    d = make("kdbench_vit_s_xs", faithful_items=tuple(items)).eval()
    x, _ = batch()
    with torch.no_grad():
        clean = d.teacher(x)[0]
    seen["token_permute"] = not torch.equal(prompted(d, x)[0], clean)

    proj = d.raa.projectors[0]
    feats = d.student(x)[1][0].detach()
    first, last = feats.clone(), feats.clone()
    first[:, 0] += 5.0
    last[:, -1] += 5.0
    with torch.no_grad():
        seen["last_token_cls"] = torch.equal(proj(feats), proj(first)) is False and \
            torch.equal(proj(feats), proj(last))

    block = d.prompts["1"]
    torch.nn.init.constant_(block.beta, 1.0)
    m = torch.randn(2, block.prompt[0].in_channels, 4, 4)
    with torch.no_grad():
        delta = block(m) - m
    seen["se_gate_only"] = torch.allclose(delta, delta[..., :1, :1].expand_as(delta))

    with torch.no_grad():
        _, s_feats = d.student(x)
        a = d.raa(s_feats)[0]
        perm = torch.tensor([1, 0, 2, 3])
        b = d.raa([f[perm] for f in s_feats])[0][perm]
    seen["pe_by_batch"] = not torch.allclose(a, b, atol=1e-6)

    t = make("kdbench_resnet50_xs", faithful_items=tuple(items)).train()
    stats = {k: v.clone() for k, v in t.teacher.state_dict().items() if "running_mean" in k}
    t.set_progress(0, 1)
    t(*batch())
    seen["teacher_train_first_step"] = any(not torch.equal(v, t.teacher.state_dict()[k]) for k, v in stats.items())
    return seen


def test_faithful_switch_changes_exactly_the_listed_behaviours():
    assert _probes(()) == {k: False for k in FAITHFUL_ITEMS}
    assert _probes(tuple(FAITHFUL_ITEMS)) == {k: True for k in FAITHFUL_ITEMS}
    for item in FAITHFUL_ITEMS:
        assert _probes((item,)) == {k: k == item for k in FAITHFUL_ITEMS}, item
    assert PATConfig(faithful=True).items == frozenset(FAITHFUL_ITEMS)


def test_se_block_keeps_spatial_resolution_when_corrected():
    spec = StageSpec("map", 8, (4, 4))
    corrected, faithful = PromptBlock(spec, spec, False, True), PromptBlock(spec, spec, True, True)
    x = torch.randn(2, 8, 4, 4)
    assert corrected.prompt(x).shape == (2, 8, 4, 4)
    assert faithful.prompt(x).shape == (2, 8, 1, 1)


def test_region_projector_grid_sizes():
    # k = ceil(H / p); the map is nearest-upsampled to k * p (algorithms.md §3.2: ResNet18 k = 14/7/4/2)
    for h, k in ((56, 14), (28, 7), (14, 4), (7, 2), (2, 1)):
        proj = RegionProjector(StageSpec("map", 3, (h, h)), 4, 8, last_token_cls=False)
        assert proj.conv.kernel_size == (k, k)
        assert proj(torch.randn(1, 3, h, h)).shape == (1, 16, 8)


# ----------------------------------------------------------------------------- feedback

def test_feedback_modes_and_changing_batch_size():
    d = make("kdbench_convnext_t_xs").train()
    d.set_progress(0, 1)
    assert d.feedback.maps == {}
    d(*batch(0, n=4))
    assert set(d.feedback.maps) == {1, 2, 3, 4} and d.feedback.maps[1].shape[0] == 4
    assert not any(f.requires_grad for f in d.feedback.maps.values())
    assert d._feedback(2, None, None)[1].shape[0] == 2          # a smaller (last) batch: sliced
    assert d._feedback(8, None, None) == {}                     # a larger one: no feedback this step
    d(*batch(1, n=2))
    d(*batch(2, n=8))
    d.eval()
    with torch.no_grad():
        d(*batch(3, n=3))
    assert d.feedback.maps[1].shape[0] == 8                     # evaluation leaves the state alone
    none = make("kdbench_convnext_t_xs", feedback="none").train()
    assert all(b.fuse is None and b.fb_align is None for b in none.prompts.values())
    assert none.num_extra_params < d.num_extra_params
    none(*batch())
    assert none.feedback.maps == {}
    current = make("kdbench_convnext_t_xs", feedback="current").train()
    current(*batch())
    assert current.feedback.maps == {}


def test_feedback_is_part_of_the_checkpoint():
    d = make("kdbench_swin_t_xs").train()
    d.set_progress(0, 1)
    d(*batch())
    state = d.trainable_state()
    assert "feedback._extra_state" in state and not any(k.startswith("teacher.") for k in state)
    e = make("kdbench_swin_t_xs")
    e.load_trainable_state(state)
    assert all(torch.equal(e.feedback.maps[k], d.feedback.maps[k]) for k in d.feedback.maps)


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(tmp_path):
    preset = load_preset("smoke")
    pairs = resolve_pairs("kdbench_swin_t_xs:kdbench_deit_t_xs", preset)
    (run,) = expand_runs(preset, pairs, ["pat"], [0], data=preset.data, teacher_cfg=preset.teacher,
                         overrides={"recipe.epochs": 2})
    device = resolve_device("cpu")
    torch.manual_seed(123)
    teacher = create_feature_model(run.teacher, num_classes=10, in_chans=3, img_size=16)

    full = Trainer(run, tmp_path / "full", device=device, teacher=teacher, context=SILENT).fit()

    class Stop(Exception):
        pass

    def stop_after_first_epoch(msg):
        if "epoch 1/2" in msg:
            raise Stop
    with pytest.raises(Stop):
        Trainer(run, tmp_path / "cut", device=device, teacher=teacher, context=RunContext(sink=stop_after_first_epoch)).fit()
    resumed = Trainer(run, tmp_path / "cut", device=device, teacher=teacher, context=SILENT)
    rec = resumed.fit()
    timing = ("img_per_s",)
    strip = lambda rows: [{k: v for k, v in h.items() if k not in timing} for h in rows]
    assert strip(full_history(tmp_path / "cut")) == strip(full_history(tmp_path / "full"))
    assert strip(resumed.history) == strip([h for h in full_history(tmp_path / "full") if h["kind"] == "epoch"])
    assert rec.top1 == full.top1 and rec.top5 == full.top5
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["distiller"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["distiller"]
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("_extra_state"):
            assert a[k]["stepped_epoch"] == b[k]["stepped_epoch"] == 1
            assert all(torch.equal(a[k]["maps"][s], b[k]["maps"][s]) for s in a[k]["maps"])
        else:
            assert torch.equal(a[k], b[k]), k


def full_history(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- switches, config, counts

def test_ablation_switches():
    plain = make(raa=False)
    assert plain.raa is None and type(plain.aligners[0]).__name__ == "StageAligner"
    no_afp = make(afp=False).train()
    out = no_afp(*batch())
    assert "pat_reg" not in out.losses and len(no_afp.prompts) == 0
    some = make(afp_stages=(2, 4))
    assert set(some.prompts) == {"2", "4"}


@pytest.mark.parametrize("setting,message", [
    ("distiller.num_queries=48", "4 x a square"), ("distiller.feedback=later", "distiller.feedback: must be one of"),
    ("distiller.faithful_items=[pe_by_token]", "'pe_by_token' in distiller.faithful_items"),
    ("distiller.dim=30", "multiple of heads"),
    ("distiller.afp_stages=[0]", "afp_stages")])
def test_bad_pat_settings_exit_2(setting, message, tmp_path, capsys):
    code = main(["run", "--distiller", "pat", "--pairs", "all", "--preset", "smoke", "--out", str(tmp_path / "r"),
                 "--set", setting])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_scoped_settings_apply_to_their_distiller_only(tmp_path, capsys):
    code = main(["bench", "--preset", "smoke", "--pair", "kdbench_vit_s_xs:kdbench_resnet18_xs", "--distillers",
                 "kd,pat", "--steps", "0", "--json", "--set", "distiller.pat.dim=64", "--set", "distiller.faithful=true"])
    assert code == 0
    rows = {r["distiller"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["pat"]["extra_params"] > 0 and rows["kd"]["extra_params"] == 0
    assert main(["bench", "--preset", "smoke", "--pair", "all", "--distillers", "kd", "--steps", "0",
                 "--set", "distiller.dim=64"]) == 2
    assert "valid choices" in capsys.readouterr().err


# algorithms.md §3.5: PAT extra parameters (N_q 64, d 512, AFP on all four stages), official code.
PAPER_PAT = {"resnet18": {"swin_tiny_patch4_window7_224": 38.52, "vit_small_patch16_224": 32.57,
                          "mixer_b16_224": 87.82},
             "mobilenetv2_100": {"swin_tiny_patch4_window7_224": 32.36, "vit_small_patch16_224": 26.41,
                                 "mixer_b16_224": 81.66},
             "deit_tiny_patch16_224": {"convnext_tiny": 14.48, "mixer_b16_224": 81.33},
             "swin_pico_patch4_window7_224": {"convnext_tiny": 17.77, "mixer_b16_224": 84.63},
             "resmlp_12_224": {"convnext_tiny": 20.77, "swin_tiny_patch4_window7_224": 38.33}}


def test_paper_scale_pat_parameters(capsys):
    assert main(["bench", "--preset", "paper", "--pair", "all", "--distillers", "pat", "--steps", "0",
                 "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12
    for r in rows:
        assert r["extra_params"] / 1e6 == pytest.approx(PAPER_PAT[r["student"]][r["teacher"]], abs=0.006), r


@pytest.mark.parametrize("size", [1, 2, 3, 6])
@pytest.mark.parametrize("groups", [1, 4])
def test_same_conv_skipping_padding_taps_is_exact(size, groups):
    from distillers.pat import SameConv2d
    torch.manual_seed(0)
    conv = SameConv2d(8, 8, 5, padding=2, groups=groups).double()
    ref = torch.nn.Conv2d(8, 8, 5, padding=2, groups=groups).double()
    ref.load_state_dict(conv.state_dict())
    x1 = torch.randn(3, 8, size, size, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = conv(x1), ref(x2)
    assert torch.allclose(y1, y2, atol=1e-12)
    y1.square().sum().backward()
    y2.square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-12)
    assert torch.allclose(conv.weight.grad, ref.weight.grad, atol=1e-12)


def test_pat_breakdown_switches_the_parts_on_one_at_a_time(capsys, tmp_path):
    """studies/pat_breakdown.py: each variant adds modules (more extra parameters) and the
    per-part increments add up to PAT's total ratio to KD."""
    from studies.pat_breakdown import main as breakdown
    out = tmp_path / "breakdown.json"
    assert breakdown(["--preset", "smoke", "--pair", "kdbench_vit_s_xs:kdbench_resnet18_xs", "--steps", "1",
                      "--repeats", "1", "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["kdbench_vit_s_xs:kdbench_resnet18_xs"]
    extras = [r[v]["extra_params"] for v in ("raa", "prompts", "pat")]
    assert 0 < extras[0] < extras[1] < extras[2]
    row = capsys.readouterr().out.splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    increments = [float(c.strip("+× KD")) for c in cells[2:5]]
    assert sum(increments) == pytest.approx(r["pat"]["ratio_to_kd"] - 1.0, abs=0.02)
    assert float(cells[5].rstrip("×")) == pytest.approx(r["pat"]["ratio_to_kd"], abs=0.01)


def test_pat_faithful_column_is_pat_with_every_official_behaviour():
    from kdbench.registry import DISTILLERS
    from test_distillers import batch, make
    cls = DISTILLERS.get("pat-faithful")
    assert cls.Config().items == frozenset(FAITHFUL_ITEMS) and cls.display_name == "PAT (official)"
    small = dict(dim=16, heads=2, num_queries=16)
    a = make("pat", "kdbench_swin_t_xs", "kdbench_resnet18_xs", faithful=True, **small).train()
    b = make("pat-faithful", "kdbench_swin_t_xs", "kdbench_resnet18_xs", **small).train()
    b.load_state_dict(a.state_dict())
    images, labels = batch()
    for _ in range(2):
        x, y = a(images, labels), b(images, labels)
        assert x.losses.keys() == y.losses.keys()
        assert all(torch.equal(x.losses[k], y.losses[k]) for k in x.losses)

