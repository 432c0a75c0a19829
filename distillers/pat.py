"""PAT (Perspective-Aware Teaching, ICCV 2025; algorithms.md §2.6 and §3).

Region-Aware Attention (RAA) mixes the student's four stages in one self-attention over N_q
region tokens; per-stage aligners map them onto the teacher's stage shapes; Adaptive Feedback
Prompts (AFP) enter the teacher's stages through `FeatureModel.stage_inputs` pre-hooks; the loss is
CE + alpha*KD(clean teacher) + beta*sum_i HCL(aligned_i, prompted teacher_i) + gamma*KL(p_T || p_T').

The default is the corrected method (§3.6 items 1-7). `faithful=true` reproduces the official
code's behaviours item by item (`FAITHFUL_ITEMS`); `faithful_items=[...]` selects some of them.
"""

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from kdbench.registry import register_distiller
from kdbench.validators import at_least, check, one_of, opt_in, positive, subset_of, unhashed

from .adapters import StageAligner, init_weights
from .base import Distiller, DistillOutput, TaskConfig, check_stages
from .losses import hcl_loss, kd_loss, standardize_logits
from .pat_prompts import FeedbackState, PromptBlock, SameConv2d, SEBlock  # noqa: F401 (all re-exported)
from .pat_raa import (PE_BATCH_ROWS, RegionAttention, RegionProjector, RegionToStage,  # noqa: F401 (all
                      back_to_tokens, grid_part, sinusoid)                                # re-exported)

FAITHFUL_ITEMS = {
    "token_permute": "PromptBlock returns token maps by a plain reshape, without the inverse permute (§3.6.1)",
    "last_token_cls": "the cls token is taken to be the last token, wherever the prefix is (§3.6.2)",
    "se_gate_only": "SEBlock returns its gate, so prompts collapse to a per-channel constant (§3.6.3)",
    "pe_by_batch": "the positional encoding is indexed by sample in the batch, not by token (§3.6.4)",
    "teacher_train_first_step": "the clean teacher runs in train mode on each epoch's first step (§3.6.5)",
}
FEEDBACK = ("prev", "none", "current")


@dataclass
class PATConfig(TaskConfig):
    """Defaults are the official code's (alpha = beta = gamma = 1, T = 1, N_q = 64, d = 512, 8 heads,
    prompts before all four teacher stages, feedback from the previous batch)."""

    kd_weight: float = 1.0          # alpha
    temperature: float = 1.0
    feat_weight: float = 1.0        # beta: the HCL feature loss
    reg_weight: float = 1.0         # gamma: KL(p_T || p_T')
    num_queries: int = 64           # N_q = 4 * p^2: a p x p region grid per stage
    dim: int = 512                  # d
    heads: int = 8
    raa: bool = True                # off: plain per-stage aligners (FitNet + HCL)
    afp: bool = True                # off: no prompts, no regulariser, clean teacher targets
    afp_stages: Tuple[int, ...] = (1, 2, 3, 4)
    feedback: str = "prev"          # prev (previous batch) | none | current (this batch, detached)
    faithful: bool = False
    faithful_items: Tuple[str, ...] = ()
    # LSKD on the KD term (alpha) only: the regulariser compares the teacher with itself, the same
    # logits' scale on both sides, so z-scoring them there has no purpose
    logit_standardization: bool = opt_in(False)
    # speed only (the same losses): the prompted teacher pass reuses the clean pass's stem and stages
    # before the first prompted stage (kdbench/models/prefix.py) instead of computing them again
    replay_prefix: bool = unhashed(True)
    # speed only: faithful (gate-only) prompt and fusion blocks from window sums (pat_closed_form.py)
    closed_form: bool = unhashed(True)
    # speed only: map aligners normalise and project the p x p region cells, then upsample (pat_raa.py)
    gathered_aligners: bool = unhashed(True)
    # speed only, for GPUs: clean and prompted teacher passes as one 2B batch (exact in eval mode; the
    # clean half also gets a zero backward); not with feedback=current or a train-mode clean pass
    fused_teacher_passes: bool = unhashed(False)

    LEVELS = 4                      # feature levels RAA attends over (p x p region tokens each)
    ITEMS = FAITHFUL_ITEMS          # the official behaviours this task's PAT can reproduce

    def __post_init__(self):
        super().__post_init__()
        check_stages(self.afp_stages, "afp_stages")
        n, per_level = self.LEVELS, self.num_queries // self.LEVELS
        p = math.isqrt(max(per_level, 0))
        check(self.num_queries >= n and self.num_queries % n == 0 and p * p == per_level, "distiller.num_queries",
              self.num_queries, f"{n} x a square ({', '.join(str(n * k * k) for k in (2, 3, 4, 6))}, ...)")
        at_least("distiller.heads", self.heads, 1)
        check(self.dim >= 1 and self.dim % self.heads == 0, "distiller.dim", self.dim,
              f"a positive multiple of heads ({self.heads})")
        one_of("distiller.feedback", self.feedback, FEEDBACK)
        subset_of("distiller.faithful_items", self.faithful_items, self.ITEMS)
        positive("distiller.temperature", self.temperature)

    @property
    def items(self) -> frozenset:
        """The official behaviours reproduced by this configuration."""
        return frozenset(self.ITEMS) if self.faithful else frozenset(self.faithful_items)

    @property
    def grid(self) -> int:
        return math.isqrt(self.num_queries // self.LEVELS)


# -- the distiller --------------------------------------------------------------------------
@register_distiller("pat")
class PAT(Distiller):
    display_name = "PAT"
    level = "features"
    Config = PATConfig

    def __init__(self, student, teacher, cfg: PATConfig, **kw):
        super().__init__(student, teacher, cfg, **kw)
        items, s_specs, t_specs = cfg.items, student.stage_specs, teacher.stage_specs
        self.last_cls, self.permute_bug = "last_token_cls" in items, "token_permute" in items
        if "teacher_train_first_step" in items:
            # The official order updates a BatchNorm teacher's statistics: on a private copy, saved in
            # this run's checkpoints, so that other runs sharing the teacher object never see it.
            self.teacher = teacher.clone()
        if cfg.raa:
            self.raa = RegionAttention(s_specs, cfg)
            self.aligners = nn.ModuleList(RegionToStage(cfg.grid, cfg.dim, t) for t in t_specs)
            self.aligners.apply(init_weights)           # the official init_weights (§3.1 item 5)
            for aligner in self.aligners:
                aligner.gathered = cfg.gathered_aligners
        else:
            self.raa = None
            self.aligners = nn.ModuleList(StageAligner(s, t) for s, t in zip(s_specs, t_specs))
        self.prompts = nn.ModuleDict()
        if cfg.afp:
            for s in cfg.afp_stages:
                self.prompts[str(s)] = PromptBlock(teacher.input_specs[s - 1], t_specs[s - 1],
                                                   "se_gate_only" in items, cfg.feedback != "none")
                self.prompts[str(s)].closed_form = cfg.closed_form
        self.feedback = FeedbackState()

    def forward(self, images, labels):
        cfg = self.cfg
        logits, s_feats = self.student(images)
        fused = self._fused_passes()
        if fused:
            feedback = self._feedback(images.shape[0], None, None)
            t_logits, t_feats, p_logits, p_feats = self._fused_teacher(images, feedback)
        else:
            prefix = self._prefix_modules(images)
            with self.teacher.prefix.record(prefix) if prefix else contextlib.nullcontext({}) as recorded:
                t_logits, t_feats, clean_in_eval = self._clean_teacher(images)
            replay = self.teacher.prefix.replay(recorded) if recorded and clean_in_eval else contextlib.nullcontext()
        aligned = self.aligners_out(s_feats)
        t_specs = self.teacher.stage_specs
        z_s, z_t = (standardize_logits(logits), standardize_logits(t_logits)) if cfg.logit_standardization \
            else (logits, t_logits)
        losses = {"gt": self.gt_loss(logits, labels), "kd": cfg.kd_weight * kd_loss(z_s, z_t, cfg.temperature)}
        if cfg.afp:
            if not fused:
                feedback = self._feedback(images.shape[0], aligned, t_feats)
                transforms = {s - 1: self._prompt_fn(s, feedback.get(s)) for s in cfg.afp_stages}
                with self.teacher.stage_inputs(transforms), replay:
                    p_logits, p_feats = self.teacher(images)      # a graph through the frozen teacher
            losses["pat_reg"] = cfg.reg_weight * kd_loss(p_logits, t_logits, 1.0)
            anchor = self._zero_anchor(feedback)
            if anchor is not None:
                losses["pat_reg"] = losses["pat_reg"] + anchor
        else:
            p_feats = t_feats
        targets = [grid_part(f, spec, self.last_cls)[0] for f, spec in zip(p_feats, t_specs)]
        losses["pat_fd"] = cfg.feat_weight * sum(hcl_loss(a, t) for a, t in zip(aligned, targets))
        if cfg.afp and cfg.feedback == "prev" and self.training:
            self.feedback.maps = {s: (aligned[s - 1] - targets[s - 1]).detach() for s in cfg.afp_stages}
        return DistillOutput(logits, losses)

    def trainable_state(self):
        state = super().trainable_state()
        if "teacher_train_first_step" in self.cfg.items:       # the teacher's drifting BN statistics
            state.update({f"teacher.{k}": v for k, v in self.teacher.named_buffers()})
        return state

    @property
    def prompted(self):
        """The FeatureModel whose stage inputs take the prompts (the teacher)."""
        return self.teacher

    @property
    def target_specs(self):
        """Shapes of the features the aligners regress (the teacher's stages)."""
        return self.teacher.stage_specs

    def aligners_out(self, s_feats):
        """The student's four stages mapped onto the teacher's stage maps (through RAA if on)."""
        regions = self.raa(s_feats) if self.raa is not None else s_feats
        return [al(r) for al, r in zip(self.aligners, regions)]

    def _fused_passes(self) -> bool:
        items = self.cfg.items
        return (self.cfg.fused_teacher_passes and self.cfg.afp and self.training and self.cfg.feedback != "current"
                and "teacher_train_first_step" not in items)

    def _fused_teacher(self, images, feedback):
        """(clean logits, clean features, prompted logits, prompted features) from one teacher pass over
        [images; images] whose prompts transform the second half only."""
        b = images.shape[0]
        self.feedback.stepped.copy_(self.epoch_tensor)

        def second_half(fn):
            return lambda x: torch.cat([x[:b], fn(x[b:])])
        transforms = {s - 1: second_half(self._prompt_fn(s, feedback.get(s))) for s in self.cfg.afp_stages}
        with self.teacher.stage_inputs(transforms):
            logits, feats = self.teacher(torch.cat([images, images]))
        return logits[:b].detach(), [f[:b].detach() for f in feats], logits[b:], [f[b:] for f in feats]

    def _prefix_modules(self, images) -> Optional[List[str]]:
        """The teacher modules that run before the first prompted stage, for the prompted pass to
        replay (`replay_prefix`); None when off, without prompts, or inside torch.compile (whose
        graphs would break on the module swap)."""
        if not (self.cfg.replay_prefix and self.cfg.afp and self.training) or torch.compiler.is_compiling():
            return None
        return self.teacher.prefix.plan(min(self.cfg.afp_stages) - 1, images, self.teacher)

    def _clean_teacher(self, images):
        """(logits, stage features, whether the pass ran in eval mode like the prompted one)."""
        if self.training and "teacher_train_first_step" in self.cfg.items:
            return self._official_clean_teacher(images)
        if self.training:
            self.feedback.stepped.copy_(self.epoch_tensor)
        with torch.no_grad():
            return (*self.teacher(images), True)

    @torch.compiler.disable     # a per-step mode switch decided on the host: kept out of compiled graphs
    def _official_clean_teacher(self, images):
        """The official order: on each epoch's first training step the clean teacher runs in train
        mode (teacher.eval() comes after this pass)."""
        first = self.feedback.host_stepped != self.epoch
        self.feedback.stepped_epoch = self.epoch
        if first:
            self.teacher.train()
        try:
            with torch.no_grad():
                return (*self.teacher(images), not first)
        finally:
            self.teacher.eval()

    def idle_parameters(self, batch: int) -> List[nn.Parameter]:
        """The fusion blocks of the stages without feedback on the next step: the first step of a run
        (and a batch larger than the previous one). See `_zero_anchor`."""
        if not (self.training and self.cfg.afp and self.cfg.feedback == "prev"):
            return []
        return [p for b in self._idle_blocks(self._feedback(batch, None, None)) for p in b.fusion_parameters()]

    def constant_names(self) -> List[str]:
        names = super().constant_names()
        return names + (["raa.pe"] if self.raa is not None else [])      # the sinusoid table (10 MB when faithful)

    def _idle_blocks(self, feedback) -> List[PromptBlock]:
        return [self.prompts[str(s)] for s in self.cfg.afp_stages if feedback.get(s) is None]

    def _zero_anchor(self, feedback) -> Optional[torch.Tensor]:
        """-0.0 computed from one entry of every fusion parameter that sits out this step: they take
        part in the graph with a zero gradient, so DDP needs no unused-parameter search, and -0.0 is
        the exact additive identity (every loss keeps its bits). The loop then clears their gradients
        (`idle_parameters`). None when every block has feedback."""
        params = [p for b in self._idle_blocks(feedback) for p in b.fusion_parameters()] if self.training else []
        if not params:
            return None
        return -(0.0 * sum(p.reshape(-1)[0] for p in params)).abs()

    def _feedback(self, batch: int, aligned, t_feats) -> Dict[int, torch.Tensor]:
        if self.cfg.feedback == "none":
            return {}
        if self.cfg.feedback == "current":
            t_specs = self.target_specs
            return {s: aligned[s - 1].detach() - grid_part(t_feats[s - 1], t_specs[s - 1], self.last_cls)[0]
                    for s in self.cfg.afp_stages}
        # previous batch: sliced when this batch is smaller, skipped when it is larger
        return {s: f[:batch] for s, f in self.feedback.maps.items() if f.shape[0] >= batch}

    def _prompt_fn(self, stage: int, feedback):
        block, spec = self.prompts[str(stage)], self.prompted.input_specs[stage - 1]

        def fn(x):
            m, rest = grid_part(x, spec, self.last_cls)
            y = block(m, feedback)
            if spec.layout == "map":
                return y
            return back_to_tokens(y, rest, self.last_cls, self.permute_bug)
        return fn


@dataclass
class PATFaithfulConfig(PATConfig):
    """PATConfig with every official behaviour reproduced (`faithful`)."""

    faithful: bool = True


@register_distiller("pat-faithful")
class PATFaithful(PAT):
    """`pat --set distiller.faithful=true` as its own leaderboard column, so one grid compares the
    corrected method with the official code's behaviour (docs/pat.md)."""

    display_name = "PAT (official)"
    Config = PATFaithfulConfig
