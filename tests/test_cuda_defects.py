"""Issue 30's CUDA-path defects that a CPU can show: box math in float32 under bf16 autocast, the
compile policy per task, and a fresh dynamo state per grid cell."""

import pytest
import torch

from kdbench.detection.model import build_detector

SMALL = dict(fpn_channels=16, representation_size=32, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=60,
             rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=60, box_batch_size_per_image=32)


def _detector():
    torch.manual_seed(0)
    return build_detector("kdbench_resnet18_xs", num_classes=4, img_size=64, **SMALL)


def test_detection_boxes_stay_float32_under_bf16_autocast():
    """torchvision decodes boxes in the dtype of the predicted offsets: under bf16 autocast proposals
    and detections would be bf16 (8 significant bits: 517.3 px becomes 516). The heads' outputs are
    float32, so proposals, ROI outputs and final boxes are too, and a decode of the same offsets keeps
    sub-pixel positions on a large canvas."""
    d = _detector().train()
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = d.forward_train(images, targets)
    assert all(p.dtype == torch.float32 for p in step.proposals)
    assert step.class_logits.dtype == step.box_regression.dtype == torch.float32
    d.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(images)
    assert all(o["boxes"].dtype == torch.float32 and o["scores"].dtype == torch.float32 for o in out)
    anchors = torch.tensor([[500.3, 510.7, 517.3, 1117.6]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        deltas = d.rpn.head(  # a zero offset through the float32 path decodes to the anchor itself
            [torch.zeros(1, 16, 2, 2)])[1][0].new_zeros(1, 4)
    decoded = d.rpn.box_coder.decode_single(deltas, anchors)
    assert decoded.dtype == torch.float32 and torch.allclose(decoded, anchors, atol=1e-3)
    assert torch.tensor([517.3]).to(torch.bfloat16).float().item() == 516.0       # what bf16 would have done


def test_compile_auto_never_compiles_detection():
    from kdbench.config import load_preset
    from kdbench.grid import resolve_compile
    cuda = torch.device("cuda")
    coco, paper = load_preset("coco"), load_preset("paper")
    assert resolve_compile("auto", paper.cnn, paper.data, cuda, "classification")          # 300 CIFAR-100 epochs
    recipe = getattr(coco, "cnn")
    assert not resolve_compile("auto", recipe, coco.data, cuda, "detection")              # ~177k steps, never tried
    assert resolve_compile(True, recipe, coco.data, cuda, "detection")                    # asked for: as given


def test_each_compiled_cell_starts_from_a_fresh_dynamo_state(monkeypatch, tmp_path):
    """The local executor resets dynamo before a compiled cell, so cells do not share compiled graphs
    or the recompile limit (later cells would fall back to eager silently and time differently)."""
    from kdbench.executors import local
    calls = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: calls.append("reset"))

    class Fake:
        def __init__(self, *a, **k):
            calls.append("trainer")

        def fit(self):
            return "record"

    monkeypatch.setattr(local, "Trainer", Fake)
    ex = local.LocalExecutor.__new__(local.LocalExecutor)
    ex.context = local.LOCAL

    class Run:
        distiller, task, compile = "vanilla", "classification", True

    class Lock:
        refresh = None

    assert ex._train(type("P", (), {"device": torch.device("cpu")})(), Run(), tmp_path, "", lambda: False, Lock()) == "record"
    Run.compile = False
    ex._train(type("P", (), {"device": torch.device("cpu")})(), Run(), tmp_path, "", lambda: False, Lock())
    assert calls == ["reset", "trainer", "trainer"]


def _pat_faithful(**items):
    from kdbench.assembly import make_criterion
    from kdbench.config import load_preset
    from kdbench.models import create_feature_model
    from kdbench.registry import DISTILLERS
    torch.manual_seed(0)
    s = create_feature_model("kdbench_deit_t_xs", num_classes=10, in_chans=3, img_size=16)
    t = create_feature_model("kdbench_convnext_t_xs", num_classes=10, in_chans=3, img_size=16)
    cls = DISTILLERS.get("pat-faithful")
    cfg = cls.Config(**load_preset("smoke").distillers.get("pat", {}), **items)
    return cls(s, t, cfg, num_classes=10, criterion=make_criterion(0.0)).train()


def test_the_closed_form_makes_no_host_tensors():
    """The closed form's window ranges are Python ints and its window sizes are computed on the input's
    device: it runs on the meta device, which any CPU tensor mixed in would refuse (on a GPU, each
    was a blocking host-to-device copy per gated block)."""
    from distillers.pat_closed_form import tap_window_sizes, tap_window_sums
    x = torch.randn(2, 3, 5, 4, device="meta")
    assert tap_window_sizes(x, (5, 5)).device.type == "meta" and tap_window_sums(x, (5, 5)).shape == (2, 3, 5, 5)
    # a 5x5 'same' conv on a 5x4 map: its taps read 3, 4, 5, 4, 3 rows and 2, 3, 4, 3, 2 columns
    sizes = tap_window_sizes(torch.zeros(1, 1, 5, 4), (5, 5))
    assert sizes.tolist() == [[r * c for c in (2, 3, 4, 3, 2)] for r in (3, 4, 5, 4, 3)]


@pytest.mark.slow
def test_faithful_pat_compiles_without_breaks_in_the_closed_form():
    """Official PAT under torch.compile: its only graph break is the clean teacher of an epoch's first
    step (`teacher_train_first_step`, a mode switch decided on the host, kept eager on purpose); with
    that item off the whole step is one graph (the closed form's `.tolist()` calls made 45)."""
    d = _pat_faithful()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    d(x, y)                                        # the feedback of a previous batch, as in training
    e = torch._dynamo.explain(d)(x, y)
    assert e.graph_break_count == 1 and "_official_clean_teacher" in str(e.break_reasons[0].reason)
    items = tuple(sorted(i for i in d.cfg.items if i != "teacher_train_first_step"))
    d = _pat_faithful(faithful=False, faithful_items=items)
    assert d.cfg.items == frozenset(items) and len(items) == 4
    d(x, y)
    e = torch._dynamo.explain(d)(x, y)
    assert e.graph_count == 1 and e.graph_break_count == 0


def test_teacher_reverification_tolerance_follows_precision_and_test_size():
    from kdbench.teachers import verification_tolerance
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert verification_tolerance("classification", "fp32", cpu, 10_000) == 0.05          # reproducible
    # CIFAR-100's 10,000 test images in bf16 on a GPU: 0.5 % + 2 may flip -> 0.52 points
    assert verification_tolerance("classification", "bf16", cuda, 10_000) == pytest.approx(0.52)
    assert verification_tolerance("classification", "fp32", cuda, 10_000) == pytest.approx(0.07)
    assert verification_tolerance("classification", "bf16", cuda, 50_000) == pytest.approx(0.504)  # ImageNet val
    assert verification_tolerance("detection", "fp32", cuda, 5_000) == 0.3                 # NMS ties: the floor


def test_ddp_leaves_the_constants_out_of_its_buffer_broadcast():
    """DDP broadcasts every buffer from rank 0 at each step unless told otherwise: the frozen teacher's
    (BatchNorm statistics included) and PAT's sinusoid table are constants, named for DDP to ignore."""
    d = _pat_faithful()
    names = set(d.constant_names())
    teacher = {f"teacher.{n}" for n, _ in (*d.teacher.named_parameters(), *d.teacher.named_buffers())}
    assert teacher <= names and "raa.pe" in names and names - teacher == {"raa.pe"}
    own = {n for n, _ in (*d.named_parameters(), *d.named_buffers())}
    assert names <= own and not any(n.startswith("student.") for n in names)
    from distillers.pat_raa import PE_BATCH_ROWS
    assert d.raa.pe.shape[0] == PE_BATCH_ROWS             # the faithful table (paper scale: 10 MB a step saved)


def test_the_previous_teacher_is_released_before_the_next_one_is_prepared(monkeypatch, tmp_path):
    import gc
    import weakref
    from kdbench.executors import local
    seen = []

    class Teacher(torch.nn.Module):
        pass

    def get_teacher(preset, name, *a, **k):
        seen.append([r() is not None for r in refs])
        t = Teacher()
        refs.append(weakref.ref(t))
        return t, type("M", (), {"top1": 1.0})()

    refs = []
    monkeypatch.setattr(local, "get_teacher", get_teacher)
    ex = local.LocalExecutor.__new__(local.LocalExecutor)
    ex.context, ex._teacher, ex._to_train = local.LOCAL, (None, None, None, None), set()
    plan = type("P", (), {"preset": None, "data": None, "teacher_cfg": None, "out": tmp_path,
                          "device": torch.device("cpu")})()
    for name in ("a", "b"):
        ex._teacher_of(plan, type("R", (), {"teacher": name})(), lambda: False)
        gc.collect()
    assert seen == [[], [False]]          # when b is prepared, a is no longer held


def test_a_gpu_fp32_run_is_recorded_as_tf32(monkeypatch):
    """Ampere+ GPUs run fp32 matmuls and convolutions in TF32 (configure_backends): such a run's
    precision, and so its hash, is not a CPU fp32 run's."""
    from kdbench.config import RecipeConfig
    recipe = RecipeConfig(amp=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    for capability, want in (((8, 0), "tf32"), ((7, 0), "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert recipe.precision_on(torch.device("cuda")) == want
    assert RecipeConfig(amp=True).precision_on(torch.device("cuda")) == "bf16"
    assert recipe.precision_on(torch.device("cpu")) == RecipeConfig().precision_on(torch.device("cpu")) == "fp32"
