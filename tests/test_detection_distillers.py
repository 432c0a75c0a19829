"""The detection distillers (distillers/detection.py, detection_pat.py) on smoke-scale Faster R-CNN
pairs: where each loss attaches, what it is at a known point, what it trains and what it leaves alone."""

import pytest
import torch

from distillers.detection_pat import DetectionPATConfig
from distillers.losses import kd_loss
from kdbench.detection.model import build_detector
from kdbench.errors import UsageError
from kdbench.registry import DISTILLERS

K, SIZE = 4, 64
SMALL = dict(fpn_channels=16, representation_size=32, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=60,
             rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=60, rpn_batch_size_per_image=64,
             box_batch_size_per_image=32)
DETECTOR_TERMS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
METHOD_TERMS = {"kd": {"kd"}, "dkd": {"dkd"}, "fitnet": {"feat", "kd"}, "reviewkd": {"hcl"}, "ofa": {"ofa"},
                "pat": {"kd", "pat_fd", "pat_reg"}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def detector(name, seed=0):
    torch.manual_seed(seed)
    return build_detector(name, num_classes=K, img_size=SIZE, **SMALL)


def make(method, student="kdbench_resnet18_xs", teacher="kdbench_swin_t_xs", teacher_seed=1, **cfg):
    cls = DISTILLERS.get(method, "detection")
    return cls(detector(student), detector(teacher, teacher_seed), cls.Config(**cfg), num_classes=K,
               criterion=torch.nn.CrossEntropyLoss())


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, SIZE, SIZE, generator=g)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 18.0, 60.0, 50.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 10.0, 26.0, 22.0]]), "labels": torch.tensor([4])}]
    return images, targets


def test_every_method_has_a_detection_version():
    assert set(DISTILLERS.names("detection")) == {"vanilla", *METHOD_TERMS}
    assert DISTILLERS.get("kd", "detection") is not DISTILLERS.get("kd")
    with pytest.raises(UsageError, match="supports: classification"):
        DISTILLERS.get("kd+ls", "detection")


@pytest.mark.parametrize("method", sorted(METHOD_TERMS))
def test_losses_gradients_and_a_frozen_teacher(method, batch):
    d = make(method).train()
    assert not d.teacher.training
    frozen = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    for step in range(2):                        # PAT: the second step has feedback
        out = d(*batch)
        assert out.logits is None
        assert set(out.losses) == DETECTOR_TERMS | METHOD_TERMS[method]
        assert all(torch.isfinite(v) and v.ndim == 0 for v in out.losses.values())
        d.zero_grad()
        sum(out.losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(torch.equal(v, d.teacher.state_dict()[k]) for k, v in frozen.items())   # BN statistics too
    stem = next(d.student.feature_model.model.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    extra = [(n, p) for n, p in d.extra_named_parameters()]
    assert (len(extra) > 0) == (method not in ("kd", "dkd"))
    missing = [n for n, p in extra if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_logit_terms_vanish_against_an_identical_teacher(method, batch):
    """A teacher with the student's weights gives the same ROI logits for the same proposals."""
    d = make(method, teacher="kdbench_resnet18_xs", teacher_seed=0).train()
    for m in d.student.modules():     # BatchNorm on running statistics on both sides: the same function
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    out = d(*batch)
    assert abs(out.losses[method].item()) < 1e-6


def test_kd_is_on_the_teachers_head_for_the_students_proposals(batch):
    d = make("kd", temperature=2.0).train()
    torch.manual_seed(3)
    out = d(*batch)
    torch.manual_seed(3)
    step = d.student.forward_train(*batch)
    with torch.no_grad():
        _, pyramid, sizes = d.teacher.forward_features(batch[0])
        z_t = d.teacher.roi_class_logits(pyramid, step.proposals, sizes)
    torch.testing.assert_close(out.losses["kd"], kd_loss(step.class_logits, z_t, 2.0))


def test_pat_prompts_start_as_identity_and_then_learn(batch):
    d = make("pat", dim=16, heads=2, num_queries=20).train()
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1)
    first = d(*batch)
    assert first.losses["pat_reg"].item() == 0.0     # beta = 0: the prompted teacher is the clean one
    assert d.feedback.maps and set(d.feedback.maps) == {1, 2, 3, 4}
    assert [tuple(m.shape[1:]) for m in d.feedback.maps.values()] == \
        [(s.channels, *s.grid) for s in d.teacher.backbone.level_specs[:4]]
    opt.zero_grad()
    sum(first.losses.values()).backward()
    betas = [b.beta.grad for b in d.prompts.values()]
    assert all(g is not None and g.abs().sum() > 0 for g in betas)
    opt.step()
    second = d(*batch)
    assert second.losses["pat_reg"].item() > 0.0
    opt.zero_grad()
    sum(second.losses.values()).backward()
    fused = [p.grad for b in d.prompts.values() for p in b.fusion_parameters()]
    assert all(g is not None for g in fused)


def test_pat_config_names_the_valid_choices():
    assert DetectionPATConfig().num_queries == 125 and DetectionPATConfig().grid == 5
    with pytest.raises(ValueError, match="5 x a square"):
        DetectionPATConfig(num_queries=64)
    with pytest.raises(ValueError, match="faithful_items"):
        DetectionPATConfig(faithful_items=("teacher_train_first_step",))
    assert "teacher_train_first_step" not in DetectionPATConfig(faithful=True).items
