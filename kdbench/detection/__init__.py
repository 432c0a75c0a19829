"""Object detection: COCO-format data and evaluation (`coco`), the generated Fashion-MNIST
detection sets (`fmnist_det`)."""

from .coco import CocoDetection, collate, evaluate_coco, load_coco_json, to_coco_predictions
from .fmnist_det import ensure_detection_set, split_paths

__all__ = ["CocoDetection", "collate", "evaluate_coco", "load_coco_json", "to_coco_predictions",
           "ensure_detection_set", "split_paths"]
