"""Tests of kdbench.detection.model (Faster R-CNN + FPN on FeatureModel backbones) and of the
detectron2 key mapping, on smoke-scale members and 64-px canvases."""

import re

import pytest
import torch

from kdbench.detection.detectron2_keys import map_detectron2_state_dict, to_detectron2_state_dict
from kdbench.detection.model import DetectionStep, build_detector, default_anchor_sizes
from kdbench.errors import UsageError

K = 4            # foreground classes
SIZE = 64
# Small heads and sample counts keep a build + train step + eval pass well under a second on CPU.
SMALL = dict(fpn_channels=16, representation_size=32, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=60,
             rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=60, rpn_batch_size_per_image=64,
             box_batch_size_per_image=32)
MEMBERS = ["kdbench_resnet18_xs", "kdbench_mobilenetv2_xs", "kdbench_convnext_t_xs", "kdbench_swin_t_xs",
           "kdbench_vit_s_xs", "kdbench_deit_t_xs", "kdbench_mixer_b_xs", "kdbench_resmlp_s12_xs"]
# Backbone parameters only the classification head reads (its final norm), so no detection loss does.
HEAD_ONLY = re.compile(r"^backbone\.body\.model\.(norm|head)\.")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These passes are many tiny ops: one thread is fastest, and keeps idle threads from spinning
    when other work shares the CPU (10x slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _detector(name="kdbench_resnet18_xs", seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_detector(name, num_classes=K, img_size=SIZE, **{**SMALL, **kwargs})


def _assert_all_reached(det):
    """Every parameter but the classifier's final norm gets a gradient (reached, maybe 0)."""
    unreached = [n for n, p in det.named_parameters() if p.grad is None]
    assert all(HEAD_ONLY.match(n) for n in unreached), unreached


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(123)
    images = torch.randn(2, 3, SIZE, SIZE, generator=g)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 18.0, 60.0, 50.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 10.0, 26.0, 22.0]]), "labels": torch.tensor([4])}]
    return images, targets


@pytest.mark.parametrize("name", MEMBERS)
def test_every_family_trains_and_detects(name, batch):
    images, targets = batch
    det = _detector(name).train()
    torch.manual_seed(7)
    reference = det(images, targets)                      # torchvision's own GeneralizedRCNN.forward
    torch.manual_seed(7)
    step = det.forward_train(images, targets)
    assert isinstance(step, DetectionStep)
    assert list(step.losses) == ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"]
    assert set(reference) == set(step.losses)
    for k in reference:                                   # same RNG draws, same ops: bit-identical
        torch.testing.assert_close(step.losses[k], reference[k], rtol=0, atol=0)
    assert all(torch.isfinite(v) for v in step.losses.values())

    fm = det.feature_model
    assert [tuple(f.shape[1:]) for f in step.stages] == [s.shape for s in fm.stage_specs]
    assert list(step.pyramid) == ["0", "1", "2", "3", "pool"]
    heights = [p.shape[-1] for p in step.pyramid.values()]
    assert all(p.shape[:2] == (2, SMALL["fpn_channels"]) for p in step.pyramid.values())
    assert all(a == 2 * b for a, b in zip(heights, heights[1:])), heights
    assert det.backbone.strides == tuple(SIZE // h for h in heights)
    n = sum(len(p) for p in step.proposals)
    assert step.class_logits.shape == (n, K + 1) and step.box_regression.shape == (n, 4 * (K + 1))
    assert [len(lab) for lab in step.roi_labels] == [len(p) for p in step.proposals]
    assert all(((lab >= 0) & (lab <= K)).all() for lab in step.roi_labels)

    det.zero_grad()
    sum(step.losses.values()).backward()
    # (timm's ResNet zero-inits each block's last BN, so some reached gradients are still exactly 0)
    _assert_all_reached(det)
    stem = next(fm.model.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0

    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2
    for o in out:
        boxes = o["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) == len(o["labels"]) == len(o["scores"])
        assert (boxes >= 0).all() and (boxes <= SIZE).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
        assert ((o["labels"] >= 1) & (o["labels"] <= K)).all()


def test_roi_class_logits_reproduce_the_heads_own(batch):
    images, targets = batch
    det = _detector("kdbench_swin_t_xs").train()
    step = det.forward_train(images, targets)
    again = det.roi_class_logits(step.pyramid, step.proposals, step.image_sizes)
    assert again.shape == (sum(len(p) for p in step.proposals), K + 1)
    torch.testing.assert_close(again, step.class_logits, rtol=0, atol=0)
    assert step.image_sizes == [(SIZE, SIZE)] * 2


def test_frozen_teacher_head_on_student_proposals(batch):
    """The KD/DKD path of PAT's rcnn.py: the teacher's ROI head on the teacher's features for the
    student's sampled proposals. A frozen eval teacher gives the same logits twice and keeps its
    BatchNorm statistics; gradients reach the student only."""
    images, targets = batch
    student = _detector("kdbench_vit_s_xs").train()
    teacher = _detector("kdbench_mobilenetv2_xs", seed=1).eval().requires_grad_(False)
    stats = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k}
    step = student.forward_train(images, targets)
    logits = []
    for _ in range(2):
        with torch.no_grad():
            _, pyramid, sizes = teacher.forward_features(images)
            logits.append(teacher.roi_class_logits(pyramid, step.proposals, sizes))
    assert sizes == step.image_sizes
    assert logits[0].shape == step.class_logits.shape == (sum(len(p) for p in step.proposals), K + 1)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in stats.items())
    kd = torch.nn.functional.kl_div(step.class_logits.log_softmax(1), logits[0].softmax(1),
                                    reduction="batchmean")
    kd.backward()
    assert next(student.feature_model.model.parameters()).grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_forward_train_needs_training_mode(batch):
    with pytest.raises(RuntimeError, match="training mode"):
        _detector().eval().forward_train(*batch)


def test_malformed_targets_are_rejected(batch):
    images, targets = batch
    det = _detector().train()
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        det.forward_train(images, [targets[0], {**targets[1], "boxes": torch.zeros(4)}])
    with pytest.raises(TypeError, match="int64"):
        det.forward_train(images, [targets[0], {**targets[1], "labels": torch.tensor([4], dtype=torch.int32)}])


def test_input_geometry_and_identity_normalisation(batch):
    images, _ = batch
    det = _detector("kdbench_vit_s_xs").eval()
    prepared, _ = det.transform(images)
    assert torch.equal(prepared.tensors, images)          # kdbench's own normalisation is kept as is
    small = torch.nn.functional.interpolate(images, size=48, mode="bilinear")
    prepared, _ = det.transform(small)
    assert prepared.tensors.shape[-2:] == (SIZE, SIZE)    # resized to the canvas, never padded
    with torch.no_grad():
        out = det(small)
    assert all((o["boxes"] <= 48).all() for o in out)     # detections come back in input pixels
    normalising = _detector("kdbench_vit_s_xs", image_mean=(0.5,) * 3, image_std=(0.25,) * 3).eval()
    assert torch.allclose(normalising.transform(images)[0].tensors, (images - 0.5) / 0.25)


def test_pyramid_strides_and_anchor_sizes():
    assert _detector("kdbench_vit_s_xs").backbone.strides == (1, 2, 4, 8, 16)   # patch 4: grid 16 x4 ... x1/2
    assert _detector("kdbench_swin_t_xs").backbone.strides == (2, 4, 8, 16, 32)
    assert default_anchor_sizes(64) == (4, 8, 16, 32, 64)
    assert default_anchor_sizes(800) == (32, 64, 128, 256, 512)                  # torchvision's
    det = _detector(anchor_sizes=(8, 16, 24, 32, 48), aspect_ratios=(1.0,))
    assert det.rpn.anchor_generator.sizes == ((8,), (16,), (24,), (32,), (48,))
    assert det.rpn.head.cls_logits.out_channels == 1
    with pytest.raises(UsageError, match="one size per level"):
        _detector(anchor_sizes=(8, 16))


def test_detectron2_keys_round_trip(batch):
    images, targets = batch
    original = _detector("kdbench_swin_t_xs", stage_norms=True).eval()
    with torch.no_grad():                 # norms start at (1, 0) in any detector: make every tensor unique
        for p in original.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d2 = to_detectron2_state_dict(original.state_dict())
    for key in ("backbone.bottom_up.patch_embed.proj.weight", "backbone.bottom_up.norm0.weight",
                "backbone.bottom_up.layers.0.downsample.reduction.weight", "backbone.fpn_lateral2.weight",
                "backbone.fpn_output5.bias", "proposal_generator.rpn_head.conv.weight",
                "proposal_generator.rpn_head.objectness_logits.weight",
                "proposal_generator.rpn_head.anchor_deltas.bias", "roi_heads.box_head.fc1.weight",
                "roi_heads.box_head.fc2.bias"):
        assert key in d2, key
    # the official Swin merges patches at the end of stages 0-2, so none after stage 3
    assert "backbone.bottom_up.layers.3.downsample.reduction.weight" not in d2
    assert not any(k.startswith("backbone.bottom_up.norm.") for k in d2)        # timm's classifier norm
    cls_w = original.state_dict()["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(d2["roi_heads.box_predictor.cls_score.weight"][-1], cls_w[0])   # background last
    assert d2["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 4 * K            # no background rows
    # what detectron2 checkpoints also hold, which the mapping drops
    d2["backbone.bottom_up.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(3, dtype=torch.long)
    d2["proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(3, 4)
    d2["pixel_mean"] = torch.zeros(3, 1, 1)

    fresh = _detector("kdbench_swin_t_xs", seed=5, stage_norms=True).eval()
    mapped = map_detectron2_state_dict({"model": d2, "__author__": "test"}, fill_from=fresh.state_dict())
    fresh.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        a, b = original(images), fresh(images)
    assert len(a[0]["boxes"]) > 0
    for x, y in zip(a, b):
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    original.train(), fresh.train()
    torch.manual_seed(3)
    la = original.forward_train(images, targets).losses
    torch.manual_seed(3)
    lb = fresh.forward_train(images, targets).losses
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=0, atol=0)
    sum(lb.values()).backward()
    _assert_all_reached(fresh)                            # the stage norms included

    flipped = map_detectron2_state_dict(d2, bgr_to_rgb=True)
    w = "backbone.body.model.patch_embed.proj.weight"
    assert torch.equal(flipped[w], mapped[w].flip(1))
    mask_head = {**d2, "roi_heads.mask_head.predictor.weight": torch.zeros(1)}     # Mask R-CNN: not mapped
    with pytest.raises(UsageError, match="no kdbench counterpart"):
        map_detectron2_state_dict(mask_head)
    assert map_detectron2_state_dict(mask_head, strict=False).keys() == map_detectron2_state_dict(d2).keys()
    with pytest.raises(UsageError, match="no detectron2 counterpart"):
        to_detectron2_state_dict(_detector("kdbench_vit_s_xs").state_dict())
