"""The `detector:` section of a detection preset: the Faster R-CNN's sizes and sampling (docs/design.md §1).

Defaults are torchvision's (which are detectron2's for Faster R-CNN + FPN, but the RPN's
post-NMS training top-k: 2000 here, 1000 in detectron2's FPN configs); the small presets shrink the
heads and the sample counts with the backbones, so the heads do not dominate a step's cost.
"""

from dataclasses import dataclass

from kdbench.validators import at_least, opt_in


@dataclass(frozen=True)
class DetectorConfig:
    fpn_channels: int = 256               # FPN width (every level)
    representation_size: int = 1024       # the box head's two FC layers
    rpn_pre_nms_top_n_train: int = 2000   # RPN proposals per level before NMS ...
    rpn_post_nms_top_n_train: int = 2000  # ... and per image after it (training)
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256   # anchors sampled per image for the RPN loss
    box_batch_size_per_image: int = 512   # proposals sampled per image for the ROI head (and the distillers)
    box_detections_per_img: int = 100
    freeze_bn: bool = opt_in(False)       # the backbone's BatchNorm frozen (detectron2's FrozenBN, its ResNet default)

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, bool):
                at_least(f"detector.{name}", value, 1)

    def kwargs(self) -> dict:
        """Keyword arguments of `kdbench.detection.model.Detector` / torchvision's `FasterRCNN`."""
        return dict(vars(self))
