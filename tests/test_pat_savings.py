"""Issue 18: PAT's exact savings. The prompted teacher pass replays the clean pass's stem and stages
before the first prompted stage (kdbench/models/prefix.py); the clean and prompted passes can run as
one 2B batch; map aligners normalise and project the region cells before upsampling. Each gives the
same losses and gradients as the plain computation."""

import pytest
import torch

from kdbench.models import create_feature_model
from test_distillers import batch, make

TEACHERS = ["kdbench_swin_t_xs", "kdbench_vit_s_xs", "kdbench_deit_t_xs", "kdbench_mixer_b_xs",
            "kdbench_resmlp_s12_xs", "kdbench_convnext_t_xs", "kdbench_resnet50_xs", "kdbench_mobilenetv2_xs"]
SMALL = dict(dim=16, heads=2, num_queries=16)


def _steps(d, n=2):
    """Losses and gradients of `n` training steps (the second fuses the first's feedback)."""
    images, labels = batch()
    steps = []
    for _ in range(n):
        out = d(images, labels)
        d.zero_grad()
        sum(out.losses.values()).backward()
        steps.append(({k: v.detach() for k, v in out.losses.items()},
                      {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}))
    return steps


def _assert_same_steps(a, b, rtol, atol):
    """The same loss terms and gradients, step by step (gradients at 10x the losses' rtol)."""
    for (loss_a, grad_a), (loss_b, grad_b) in zip(a, b):
        assert loss_a.keys() == loss_b.keys() and grad_a.keys() == grad_b.keys()
        for k in loss_a:
            torch.testing.assert_close(loss_a[k], loss_b[k], rtol=rtol, atol=atol)
        for n in grad_a:
            torch.testing.assert_close(grad_a[n], grad_b[n], rtol=10 * rtol, atol=atol, msg=n)


def _counting(model, names):
    counts = dict.fromkeys(names, 0)
    for n in names:
        model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: counts.__setitem__(n, counts[n] + 1))
    return counts


@pytest.mark.parametrize("stages", [(1, 2, 3, 4), (2, 4), (3, 4), (4,)])
@pytest.mark.parametrize("teacher", TEACHERS)
def test_prompted_pass_replays_the_clean_prefix_exactly(teacher, stages):
    runs, skipped = [], None
    for replay in (True, False):
        d = make("pat", teacher, "kdbench_resnet18_xs", afp_stages=stages, replay_prefix=replay, **SMALL).train()
        for block in d.prompts.values():
            torch.nn.init.constant_(block.beta, 0.5)         # prompts that change the teacher
        if replay:
            plan = d.teacher.prefix.plan(stages[0] - 1, batch()[0], d.teacher)
            assert plan, "nothing to replay"
            counts = _counting(d.teacher.model, plan)
        runs.append(_steps(d))
        if replay:
            skipped = counts
    # each prefix module ran once per step (the clean pass), not twice
    assert set(skipped.values()) == {2}, skipped
    _assert_same_steps(*runs, rtol=1e-6, atol=1e-7)


def test_plan_covers_the_stem_and_earlier_stages():
    fm = create_feature_model("kdbench_resnet50_xs", num_classes=10, in_chans=3, img_size=16)
    x = torch.zeros(1, 3, 16, 16)
    assert fm.prefix.plan(0, x, fm) == ["conv1", "bn1", "act1", "maxpool"]
    assert fm.prefix.plan(2, x, fm) == ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2"]
    vit = create_feature_model("kdbench_vit_s_xs", num_classes=10, in_chans=3, img_size=16)
    first = vit.stage_module_names[1]
    plan = vit.prefix.plan(1, x, vit)
    assert plan[0] == "patch_embed" and plan[-1] == f"blocks.{int(first.split('.')[1]) - 1}"


def test_faithful_first_step_of_an_epoch_does_not_replay_a_train_mode_pass():
    """With `teacher_train_first_step` the clean pass of an epoch's first step runs in train mode:
    its prefix differs from the eval-mode prompted pass's, so that step computes it again."""
    runs = []
    for replay in (True, False):
        d = make("pat", "kdbench_resnet50_xs", "kdbench_deit_t_xs", faithful_items=("teacher_train_first_step",),
                 replay_prefix=replay, **SMALL).train()
        d.set_progress(0, 2)
        runs.append(_steps(d))
    for (loss_a, _), (loss_b, _) in zip(*runs):
        for k in loss_a:
            torch.testing.assert_close(loss_a[k], loss_b[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("teacher", ["kdbench_swin_t_xs", "kdbench_vit_s_xs", "kdbench_resnet50_xs", "kdbench_mixer_b_xs"])
def test_fused_clean_and_prompted_teacher_passes_equal_two_passes(teacher):
    """`fused_teacher_passes` (for GPUs): one 2B teacher pass, the prompts on its second half only."""
    runs = []
    for fused in (True, False):
        d = make("pat", teacher, "kdbench_deit_t_xs", fused_teacher_passes=fused, **SMALL).train()
        for block in d.prompts.values():
            torch.nn.init.constant_(block.beta, 0.5)
        runs.append(_steps(d, n=3))
    _assert_same_steps(*runs, rtol=1e-5, atol=1e-6)


def test_fused_passes_are_not_taken_where_the_clean_pass_must_come_first():
    for cfg in (dict(feedback="current"), dict(faithful_items=("teacher_train_first_step",))):
        d = make("pat", "kdbench_vit_s_xs", "kdbench_deit_t_xs", fused_teacher_passes=True, **SMALL, **cfg).train()
        assert not d._fused_passes()
    d = make("pat", "kdbench_vit_s_xs", "kdbench_deit_t_xs", fused_teacher_passes=True, **SMALL)
    assert d.train()._fused_passes() and not d.eval()._fused_passes()


@pytest.mark.parametrize("grid", [(14, 14), (7, 5), (4, 4), (9, 16)])
def test_gathered_aligner_equals_upsample_then_bn_and_conv(grid):
    from distillers.pat import RegionToStage
    from kdbench.models import StageSpec
    torch.manual_seed(0)
    fast = RegionToStage(4, 8, StageSpec("map", 6, grid)).double()
    slow = RegionToStage(4, 8, StageSpec("map", 6, grid)).double()
    slow.load_state_dict(fast.state_dict())
    slow.gathered = False
    for m in (fast, slow):
        torch.nn.init.normal_(m.norm.weight), torch.nn.init.normal_(m.norm.bias)
    slow.load_state_dict(fast.state_dict())
    tokens = torch.randn(3, 16, 8, dtype=torch.float64, requires_grad=True)
    for step in range(2):                                  # training: batch statistics, running stats updated
        a, b = fast(tokens), slow(tokens)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        w = torch.randn_like(a)
        ga = torch.autograd.grad((a * w).sum(), [tokens] + list(fast.parameters()))
        gb = torch.autograd.grad((b * w).sum(), [tokens] + list(slow.parameters()))
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)
    for name, buf in fast.norm.named_buffers():
        torch.testing.assert_close(buf, dict(slow.norm.named_buffers())[name], rtol=1e-12, atol=1e-12, msg=name)
    fast.eval(), slow.eval()
    torch.testing.assert_close(fast(tokens), slow(tokens), rtol=1e-10, atol=1e-12)


def test_pat_steps_with_gathered_aligners_equal_the_upsampled_ones(monkeypatch):
    from distillers.pat import RegionToStage
    runs = []
    for gathered in (True, False):
        monkeypatch.setattr(RegionToStage, "gathered", gathered)
        d = make("pat", "kdbench_convnext_t_xs", "kdbench_deit_t_xs", **SMALL).train()
        runs.append(_steps(d))
    _assert_same_steps(*runs, rtol=1e-5, atol=1e-6)
