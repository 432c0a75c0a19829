"""PAT on detection (issue 17), as the official detection code attaches it (`detection/model/pat.py`,
`rcnn.py`, `backbone/fpn_wAFP.py`):

- RAA mixes the student's five FPN levels ("0".."3", "pool") in one attention over N_q region tokens
  (official: 125, 25 per level); per-level aligners map them onto the teacher's FPN levels.
- Prompts enter the teacher backbone's four stages (FeatureModel pre-hooks), so the prompted
  teacher's FPN sees prompted stages, as `fpn_wAFP.py` passes the feedback to its bottom-up
  backbone. Stage s's feedback is level s-1's (student aligned - prompted teacher) of the previous
  step, resized to the stage input and projected to its width.
- Loss: the detector's losses + alpha * KD(student ROI logits, clean teacher ROI logits on the
  student's sampled proposals) + beta * sum over levels of HCL(aligned, prompted teacher level)
  + gamma * KL(clean teacher ROI logits || prompted teacher ROI logits).

Differences from the official code: its feedback aligner is a bare 1x1 conv with PyTorch's init,
kdbench's the classification one (BN + 1x1 conv, `init_weights`); the official fixes the teacher
level sizes for 800x1216 inputs and interpolates to them, kdbench's aligners target the levels'
actual sizes (one canvas per preset); `teacher_train_first_step` is refused here. The official
detection teacher is not in eval mode (nothing in its `rcnn.py` calls `teacher.eval()`, so it runs in
train mode with its drop-path) and its prompts are never trained (they sit inside the frozen teacher):
the full list, with file references, is docs/detection.md "Differences from the official detection code".
"""

from dataclasses import dataclass

import torch
from torch import nn

from kdbench.registry import register_distiller

from .adapters import StageAligner, init_weights
from .base import Distiller, DistillOutput
from .detection import DetectionDistiller
from .losses import hcl_loss, kd_loss, standardize_logits
from .pat import FAITHFUL_ITEMS, PAT, FeedbackState, PATConfig, PromptBlock, RegionAttention, RegionToStage

NUM_LEVELS = 5          # the FPN levels "0".."3" and "pool" (kdbench.detection.model)
DETECTION_ITEMS = {k: v for k, v in FAITHFUL_ITEMS.items() if k != "teacher_train_first_step"}


@dataclass
class DetectionPATConfig(PATConfig):
    """The official PAT detection configs' (configs/FOFA/*.yaml over model/config.py): alpha = beta =
    gamma = 1, T 1, N_q 125 over the five FPN levels (a 5x5 grid each), d 64, prompts before all four
    teacher stages."""

    num_queries: int = 125
    dim: int = 64

    LEVELS = NUM_LEVELS
    ITEMS = DETECTION_ITEMS


@register_distiller("pat", task="detection")
class DetectionPAT(DetectionDistiller, PAT):
    """PAT on a Faster R-CNN student and teacher (see the module docstring). Shares the
    classification PAT's blocks and its feedback, prompt and idle-parameter logic."""

    display_name = "PAT"
    Config = DetectionPATConfig

    def __init__(self, student, teacher, cfg: DetectionPATConfig, **kw):
        Distiller.__init__(self, student, teacher, cfg, **kw)
        items = cfg.items
        self.last_cls, self.permute_bug = "last_token_cls" in items, "token_permute" in items
        s_levels, t_levels = student.backbone.level_specs, teacher.backbone.level_specs
        if cfg.raa:
            self.raa = RegionAttention(s_levels, cfg)
            self.aligners = nn.ModuleList(RegionToStage(cfg.grid, cfg.dim, t) for t in t_levels)
            self.aligners.apply(init_weights)
            for aligner in self.aligners:
                aligner.gathered = cfg.gathered_aligners
        else:
            self.raa = None
            self.aligners = nn.ModuleList(StageAligner(s, t) for s, t in zip(s_levels, t_levels))
        self.prompts = nn.ModuleDict()
        if cfg.afp:
            for s in cfg.afp_stages:
                self.prompts[str(s)] = PromptBlock(self.prompted.input_specs[s - 1], t_levels[s - 1],
                                                   "se_gate_only" in items, cfg.feedback != "none")
                self.prompts[str(s)].closed_form = cfg.closed_form
        self.feedback = FeedbackState()

    @property
    def prompted(self):
        return self.teacher.feature_model

    @property
    def target_specs(self):
        return self.teacher.backbone.level_specs

    def forward(self, images, targets):
        cfg = self.cfg
        step = self.student.forward_train(images, targets)
        with torch.no_grad():
            _, t_pyramid, sizes = self.teacher.forward_features(images)
            z_t = self.teacher.roi_class_logits(t_pyramid, step.proposals, sizes)
        aligned = self.aligners_out(list(step.pyramid.values()))
        z_s, z_kd = step.class_logits, z_t
        if cfg.logit_standardization:
            z_s, z_kd = standardize_logits(z_s), standardize_logits(z_t)
        losses = self.detector_losses(step)
        losses["kd"] = cfg.kd_weight * kd_loss(z_s, z_kd, cfg.temperature)
        levels = list(t_pyramid.values())
        if cfg.afp:
            feedback = self._feedback(images.shape[0], aligned, levels)
            transforms = {s - 1: self._prompt_fn(s, feedback.get(s)) for s in cfg.afp_stages}
            with self.prompted.stage_inputs(transforms):
                _, p_pyramid, _ = self.teacher.forward_features(images)     # a graph through the frozen teacher
            z_p = self.teacher.roi_class_logits(p_pyramid, step.proposals, sizes)
            losses["pat_reg"] = cfg.reg_weight * kd_loss(z_p, z_t, 1.0)
            anchor = self._zero_anchor(feedback)
            if anchor is not None:
                losses["pat_reg"] = losses["pat_reg"] + anchor
            levels = list(p_pyramid.values())
        losses["pat_fd"] = cfg.feat_weight * sum(hcl_loss(a, t) for a, t in zip(aligned, levels))
        if cfg.afp and cfg.feedback == "prev" and self.training:
            self.feedback.maps = {s: (aligned[s - 1] - levels[s - 1]).detach() for s in cfg.afp_stages}
        return DistillOutput(None, losses)

    def trainable_state(self):
        return Distiller.trainable_state(self)
