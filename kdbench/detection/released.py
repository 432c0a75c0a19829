"""Released detection teachers: a checkpoint file -> a `Detector` that sees exactly what it was trained on.

Two layouts are read: kdbench's own (a `Detector` state dict, e.g. a teacher trained by kdbench at
this scale and copied elsewhere) and detectron2's Faster R-CNN + FPN (PAT's Swin-T teacher,
`faster_rcnn_swint_T.pth`), recognised by its `backbone.bottom_up.` keys and mapped by
`detectron2_keys` (its per-stage LayerNorms `norm0..3` make the detector `stage_norms=True`).

Input statistics. Students see images in [0, 1] normalised with the dataset's per-channel mean m and
std s (RGB). A checkpoint trained on other inputs (detectron2: `INPUT.FORMAT` BGR, 0-255 pixels,
`PIXEL_MEAN` M, `PIXEL_STD` S, in that channel order; PAT's configs use S = 1) is given them exactly:
the channel order by reversing the first layer's input channels (BGR -> RGB), the statistics by the
detector's own normalisation (torchvision's `(x - image_mean) / image_std`), with
image_mean = (M/255 - m) / s and image_std = S / (255 s) per RGB channel, so that
(x_n - image_mean) / image_std = (255 x - M) / S for x_n = (x - m) / s.
"""

from typing import Mapping, Optional, Sequence, Tuple

from kdbench.errors import UsageError

from .detectron2_keys import map_detectron2_state_dict

Stats = Tuple[Sequence[float], Sequence[float]]


def is_detectron2(state: Mapping) -> bool:
    """A detectron2 GeneralizedRCNN state dict (FPN over a `bottom_up` backbone)?"""
    return any(k.startswith("backbone.bottom_up.") for k in state)


def has_stage_norms(state: Mapping) -> bool:
    """detectron2's Swin backbone keeps one LayerNorm per output stage (`backbone.bottom_up.norm{i}`)."""
    return any(k.startswith("backbone.bottom_up.norm") for k in state)


def teacher_input(student_stats: Stats, pixel_format: str, pixel_mean: Sequence[float],
                  pixel_std: Sequence[float]) -> Optional[dict]:
    """`image_mean` / `image_std` for a teacher trained on `pixel_format` images in 0-255 units minus
    `pixel_mean`, over `pixel_std`, that receives inputs normalised by `student_stats` (per-channel, or
    one value for all channels, in [0, 1] units); None when the teacher has no statistics of its own."""
    if not pixel_mean:
        return None
    mean, std = (list(v) * (3 if len(v) == 1 else 1) for v in student_stats)
    if not len(mean) == len(pixel_mean) == len(pixel_std):
        raise UsageError(f"teacher.pixel_mean has {len(pixel_mean)} channels, the data {len(mean)}")
    big_m, big_s = (list(v)[::-1] if pixel_format == "BGR" else list(v) for v in (pixel_mean, pixel_std))
    return dict(image_mean=[(bm / 255 - m) / s for bm, m, s in zip(big_m, mean, std)],
                image_std=[bs / (255 * s) for bs, s in zip(big_s, std)])


def load_released_detector(build, name: str, state: Mapping, path, *, student_stats: Stats, tcfg):
    """`build(name, **detector_kwargs)` -> a `Detector` holding `state` (either layout), strictly, with the
    input conversion of `tcfg` (TeacherConfig: pixel_format, pixel_mean, pixel_std)."""
    state = state.get("model", state) if isinstance(state.get("model"), Mapping) else state
    extra = teacher_input(student_stats, tcfg.pixel_format, tcfg.pixel_mean, tcfg.pixel_std) or {}
    if is_detectron2(state):
        detector = build(name, stage_norms=has_stage_norms(state), **extra)
        state = map_detectron2_state_dict(state, bgr_to_rgb=tcfg.pixel_format == "BGR",
                                          fill_from=detector.state_dict())
    else:
        if tcfg.pixel_format == "BGR":
            raise UsageError("teacher.pixel_format=BGR is for detectron2 checkpoints; this file is in kdbench's "
                             "own layout")
        detector = build(name, **extra)
    try:
        detector.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        lines = [x.strip() for x in str(exc).splitlines()[1:2]]
        raise UsageError(f"detection teacher checkpoint {path} does not fit {name}: {first} "
                         f"{' '.join(lines)[:300]}") from None
    return detector
