"""The one training loop shared by every distiller (and by teacher training)."""

import copy
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .assembly import build_distiller
from .config import RecipeConfig, RunConfig
from .context import LOCAL, RunContext
from .curves import CurveLog, curve_every, merged_metrics
from .errors import UsageError
from .flops import run_flops
from .memory import peak_memory_mb, reset_peak_memory
from .models import FeatureModel
from .results import CHECKPOINT, RunRecord, atomic_torch_save, write_metrics
from .tasks import CLASSIFICATION, task_of

STOP_CHECK_EVERY = 25                         # DDP: training steps between the collectives that agree on a stop


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN/inf: the run is failed, not averaged."""


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM): a checkpoint of the last finished step was saved."""


def lr_at(step: int, total: int, warmup: int, r: RecipeConfig) -> float:
    """Per-step schedule: linear warm-up from warmup_lr, then cosine (or step decay) to min_lr;
    `multistep` multiplies by step_gamma at each of `milestones` (fractions of the total steps)."""
    if step < warmup:
        return r.warmup_lr + (r.lr - r.warmup_lr) * step / warmup
    if r.schedule == "multistep":
        return max(r.lr * r.step_gamma ** sum(step >= m * total for m in r.milestones), r.min_lr)
    if r.schedule == "step":
        return max(r.lr * r.step_gamma ** (step * r.epochs // max(total, 1) // r.step_epochs), r.min_lr)
    progress = (step - warmup) / max(total - warmup, 1)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(distiller, weight_decay: float):
    """No weight decay on 1-D parameters and on the student's `no_weight_decay()` set."""
    timm_model = getattr(distiller.student, "feature_model", distiller.student).model   # a Detector's backbone
    prefix = next(name + "." for name, m in distiller.named_modules() if m is timm_model)
    nwd = getattr(timm_model, "no_weight_decay", lambda: set())()
    decay, no_decay = [], []
    for name, p in distiller.named_parameters():
        if not p.requires_grad:
            continue
        local = name[len(prefix):] if name.startswith(prefix) else None
        (no_decay if p.ndim <= 1 or local in nwd else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(groups, r: RecipeConfig, device: torch.device):
    """SGD or AdamW as the recipe says: fused kernels on CUDA (SGD's since torch 2.3), foreach on CPU."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if r.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov and r.momentum > 0, **fast)
    return torch.optim.AdamW(groups, lr=r.lr, **fast)


def configure_backends(deterministic: bool):
    """Process-wide torch.backends settings, set by every Trainer (on a CPU only `deterministic` counts).

    TF32 for fp32 matmuls and convolutions on Ampere+ GPUs: timm's train.py sets it for matmuls; OFA and
    PAT (timm 0.6.5 on torch 1.10 / 1.13) had it by torch's defaults for convolutions (1.10: matmuls
    too), their matmuls running in fp16 AMP. cuDNN autotuning unless `deterministic`: kernels chosen by
    timing may differ between runs. `deterministic`: deterministic kernels where torch has them, a
    warning where it has none (CUDA backward of adaptive average pooling, as in HCL, SE blocks and CNN
    heads, and of bilinear interpolation; NLL loss), and cuBLAS's fixed workspace. cuBLAS reads
    CUBLAS_WORKSPACE_CONFIG when it starts: export it if the process ran a CUDA matmul before.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


class StudentEMA:
    """Exponential moving average of the student's weights (buffers copied)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        ema_p = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def evaluate(model: Callable, loader, device, autocast) -> Dict[str, float]:
    """Top-1/top-5 (percent) of `model(images) -> logits` over the whole loader (classification)."""
    return CLASSIFICATION.evaluate(model, loader, device, autocast)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; valid here: auto, cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{name}'; valid choices: auto, cpu, cuda")
    return torch.device(name)


def autocast_for(precision: str, device: torch.device):
    """A context factory for `precision` on `device`: training and every evaluation of a run use the
    same one, so a teacher verified later reproduces the top-1 its manifest recorded."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def train_step(forward, optimizer, images, targets, *, params, clip_grad: float, autocast, idle=(), extra=None):
    """One optimisation step; returns the distiller output and the (on-device) total loss. `idle`:
    parameters this step used with a zero weight only (`Distiller.idle_parameters`); their gradients
    are cleared before clipping and the update, as if they had sat the step out. `extra`: keyword
    inputs of the distiller's forward beyond the batch (`index`, for `needs_sample_index`)."""
    with autocast():
        out = forward(images, targets, **(extra or {}))
    loss = sum(out.losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in idle:
        p.grad = None
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    optimizer.step()
    return out, loss


class Trainer:
    """Trains one run (a distiller on a pair with a seed) with checkpoint/resume, writes its record."""

    def __init__(self, run: RunConfig, run_dir: Path, *, device: torch.device,
                 teacher: Optional[FeatureModel] = None, teacher_top1: Optional[float] = None,
                 context: RunContext = LOCAL, label: str = "",
                 should_stop: Callable[[], bool] = lambda: False, on_epoch: Callable[[], None] = lambda: None):
        self.run, self.run_dir, self.device = run, Path(run_dir), device
        self.should_stop, self.on_epoch = should_stop, on_epoch
        self.teacher_top1, self.log, self.label, self.context = teacher_top1, context.log, label, context
        configure_backends(run.deterministic)      # before any CUDA work of this run
        r = run.recipe
        self.dist = context.dist
        self.task = task_of(run.task)
        self.train_loader, self.eval_loader, self.info = self.task.loaders(
            run, batch_size=self.dist.per_rank_batch(r.batch_size), device=device, rank=self.dist.rank,
            world_size=self.dist.world_size)
        self.distiller = build_distiller(run, num_classes=self.info.num_classes, in_chans=self.info.in_chans,
                                         img_size=self.info.img_size, teacher=teacher, device=device)
        if self.distiller.needs_sample_index:      # e.g. CRD's memory bank: one row per training sample
            self.distiller.bind_training_set(self.train_loader.sample_labels())
        self.optimizer = build_optimizer(param_groups(self.distiller, r.weight_decay), r, device)
        student = self.distiller.student
        if r.ema_decay > 0 and run.task != "classification":
            raise UsageError(f"recipe.ema_decay: the student EMA is for classification runs, not {run.task}")
        self.ema = StudentEMA(student.model, r.ema_decay) if r.ema_decay > 0 else None
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = r.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(r.warmup_epochs * self.steps_per_epoch))
        self.autocast = autocast_for(run.precision, device)
        self.forward = self.distiller
        if self.dist.active:      # constants (the frozen teacher, PE tables) are not broadcast every step
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.distiller,
                                                                               self.distiller.constant_names())
            self.forward = DistributedDataParallel(
                self.distiller, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.distiller.find_unused_parameters)
        if run.compile:
            self.forward = torch.compile(self.forward)
        self.epoch, self.step, self.history = 0, 0, []
        self.curve = CurveLog(curve_every(r.log_every, self.total_steps), self.steps_per_epoch)
        reset_peak_memory(device)
        self.train_time, self.train_images, self.wall_before = 0.0, 0, 0.0
        self.partial = None          # progress inside an epoch, from a checkpoint saved on a stop request

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, wall: float, partial: Optional[dict] = None):
        self.curve.flush(self.dist)         # every rank: a collective under DDP
        if not self.dist.is_main:
            return
        state = {"config_hash": self.run.hash(), "epoch": self.epoch, "step": self.step, "partial": partial,
                 "history": self.history, "curve": self.curve.state(),
                 "distiller": self.distiller.trainable_state(),
                 "optimizer": self.optimizer.state_dict(), "ema": self.ema.model.state_dict() if self.ema else None,
                 "rng_cpu": torch.get_rng_state(),
                 "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                 "train_time": self.train_time, "train_images": self.train_images, "wall": wall}
        atomic_torch_save(self.run_dir / CHECKPOINT, state)

    def try_resume(self) -> bool:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            self.log(f"  checkpoint {path} is unreadable ({exc.__class__.__name__}); starting over")
            return False
        if state.get("config_hash") != self.run.hash():
            raise UsageError(f"{path} belongs to a different configuration (hash {state.get('config_hash')} "
                             f"!= {self.run.hash()}); rerun with --fresh or use another --out")
        self.distiller.load_trainable_state(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.model.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        self.curve.load_state(state.get("curve"))
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        self.wall_before = state["wall"]
        self.partial = state.get("partial")
        return True

    # -- the loop -------------------------------------------------------------------------
    def train_epoch(self):
        d, r = self.distiller, self.run.recipe
        d.train()
        d.set_progress(self.epoch, r.epochs)
        params = [p for p in d.parameters() if p.requires_grad]
        partial, self.partial = self.partial or {}, None
        sums: Dict[str, torch.Tensor] = partial.get("sums", {})
        bad_step = partial.get("bad_step", torch.full((), -1, device=self.device, dtype=torch.long))
        done, n = partial.get("batches", 0), partial.get("images", 0)
        n_before = n                     # images of this epoch trained before a resume: not timed here
        start = time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, initial=done, desc=f"{self.label} epoch {self.epoch + 1}",
                   leave=False, disable=None, file=sys.stderr,    # shown on a terminal only
                   position=self.context.progress_row)
        batches = self.train_loader.epoch(self.epoch)
        for _ in range(done):            # resuming inside the epoch: the same batches, already trained
            next(batches)
        rows = self.train_loader.shard(self.epoch)[0].to(self.device) if d.needs_sample_index else None
        for images, targets in batches:
            lr = lr_at(self.step, self.total_steps, self.warmup_steps, r)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            out, loss = train_step(self.forward, self.optimizer, images, targets, params=params,
                                   clip_grad=r.clip_grad, autocast=self.autocast,
                                   idle=d.idle_parameters(images.shape[0]),
                                   extra=None if rows is None else {"index": rows[done]})
            if self.ema is not None:
                self.ema.update(d.student.model)
            for k, v in out.losses.items():     # accumulated on device: no host sync per step
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), self.step, bad_step)
            self.step += 1
            self.curve.add(self.step, lr, out.losses, out.logits, targets)
            done += 1
            n += images.shape[0]
            bar.update()
            if self._stop_agreed(done) and done < self.steps_per_epoch:
                bar.close()
                self.train_time += time.perf_counter() - start
                self.save_checkpoint(self.wall_before + time.perf_counter() - self._t0, partial={
                    "batches": done, "images": n, "sums": sums, "bad_step": bad_step})
                raise Interrupted(f"stopped after step {self.step} (epoch {self.epoch + 1}, "
                                  f"batch {done}/{self.steps_per_epoch}); checkpoint saved")
        bar.close()
        self.train_time += time.perf_counter() - start
        n *= self.dist.world_size
        self.train_images += n
        if self.dist.active:      # mean over ranks for the log; a fault on any rank fails them all
            for v in sums.values():
                self.dist.all_reduce_(v)
            sums = {k: v / self.dist.world_size for k, v in sums.items()}
            self.dist.all_reduce_(bad_step, torch.distributed.ReduceOp.MAX)
        losses = {k: v.item() / self.steps_per_epoch for k, v in sums.items()}
        if bad_step.item() >= 0:
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            raise NonFiniteLoss(f"non-finite loss at step {bad_step.item()} (epoch {self.epoch + 1}); "
                                f"non-finite terms over the epoch: {', '.join(bad) or 'total'}")
        return losses, lr, (n - n_before * self.dist.world_size) / max(time.perf_counter() - start, 1e-9)

    def _stop_agreed(self, batches_done: Optional[int] = None) -> bool:
        """A stop request, agreed by every rank. One process checks at every call (it is free). Under
        DDP a check is an all-reduce and a host sync: inside an epoch (`batches_done` batches in) only
        every STOP_CHECK_EVERY steps, and at the end of an epoch (no argument) always."""
        if self.dist.active and batches_done is not None and (
                batches_done % STOP_CHECK_EVERY or batches_done >= self.steps_per_epoch):
            return False
        return self.dist.any_rank(self.should_stop(), self.device)

    def fit(self) -> RunRecord:
        # the step's work, for cost in FLOPs: on fresh CPU models, the RNG restored, before the clock starts
        self.train_flops_per_img = run_flops(self.run, self.info)["train_flops_per_img"] if self.dist.is_main else None
        t0 = self._t0 = time.perf_counter()
        if self.try_resume():
            within = f", batch {self.partial['batches']}" if self.partial else ""
            self.log(f"  {self.label} resumed after epoch {self.epoch}{within}")
        r = self.run.recipe
        while self.epoch < r.epochs:
            losses, lr, ips = self.train_epoch()
            metrics = self.evaluate_if_due()
            self.epoch += 1
            row = {"kind": "epoch", "epoch": self.epoch, "step": self.step, "lr": lr, "img_per_s": round(ips, 1),
                   "loss": {k: round(v, 6) for k, v in losses.items()}, **metrics}
            self.history.append(row)
            wall = self.wall_before + time.perf_counter() - t0
            self.save_checkpoint(wall)
            self.write_metrics()
            scored = f"{self.run.metric} {metrics[self.run.metric]:.2f}  " if metrics else ""
            self.log(f"  {self.label} epoch {self.epoch}/{r.epochs}  loss {sum(losses.values()):.4f}  "
                     f"{scored}{ips:.0f} img/s  {wall:.0f}s")
            self.on_epoch()
            if self._stop_agreed() and self.epoch < r.epochs:
                raise Interrupted(f"stopped after epoch {self.epoch}; checkpoint saved")
        return self.record(self.wall_before + time.perf_counter() - t0)

    def evaluate_if_due(self) -> Dict[str, float]:
        """The test-set metrics after the epoch now ending, or {} where `recipe.eval_every` skips it (the
        final epoch is always scored): long runs of small students spend most of their time evaluating."""
        r, ending = self.run.recipe, self.epoch + 1
        if ending % r.eval_every and ending < r.epochs:
            return {}
        self.distiller.eval()
        metrics = self.task.evaluate(self.distiller.student, self.eval_loader, self.device, self.autocast)
        if self.ema is not None:
            ema = self.task.evaluate(self.ema.model, self.eval_loader, self.device, self.autocast)
            metrics.update(ema_top1=ema["top1"], ema_top5=ema["top5"])
        return metrics

    def write_metrics(self):
        if self.dist.is_main:
            write_metrics(self.run_dir, merged_metrics(self.curve.rows, self.history))

    def record(self, wall: float) -> RunRecord:
        return RunRecord.done(
            self.run, self.history, dataset=self.info.name, num_train=self.info.num_train,
            num_test=self.info.num_test, teacher_top1=self.teacher_top1, wall_s=wall,
            img_per_s=self.train_images / max(self.train_time, 1e-9), peak_mem_mb=peak_memory_mb(self.device),
            student_params=self.distiller.num_student_params, extra_params=self.distiller.num_extra_params,
            world_size=self.dist.world_size, device=self.device, train_flops_per_img=self.train_flops_per_img)
