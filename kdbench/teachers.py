"""Teacher zoo: train (small presets) or load (paper presets), cache with a manifest, verify."""

import contextlib
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from distillers.base import TaskConfig

from .checkpoints import read_weights
from .config import Preset, RecipeConfig, RunConfig, TeacherConfig
from .context import LOCAL, RunContext
from .data import DataConfig
from .assembly import to_training_layout
from .engine import Trainer, autocast_for
from .errors import UsageError
from .locks import RunLock
from .models import FeatureModel, recipe_kind_of
from .assets import published_data
from .results import TeacherManifest, atomic_torch_save, read_manifest, write_manifest
from .tasks import task_of

WEIGHTS = "model.pt"


def teacher_run(preset: Preset, teacher: str, data: DataConfig, tcfg: TeacherConfig,
                device: torch.device) -> RunConfig:
    """The RunConfig that trains `teacher` from scratch (the `vanilla` method) on `device`; its
    precision is also the one every evaluation of the teacher uses."""
    recipe: RecipeConfig = getattr(tcfg, recipe_kind_of(teacher, data.img_size))
    if tcfg.train_limit is not None:
        data = dataclasses.replace(data, train_limit=tcfg.train_limit)
    return RunConfig(preset=preset.name, teacher=teacher, student=teacher, seed=tcfg.seed, distiller="vanilla",
                     distiller_config=TaskConfig(), recipe=recipe, data=data, teacher_config=tcfg,
                     precision=recipe.precision_on(device), task=preset.task, detector=preset.detector)


def teacher_dir(out: Path, preset: str, teacher: str) -> Path:
    return Path(out) / "teachers" / preset / teacher


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fresh_model(run: RunConfig, info, device):
    """The untrained teacher model of the teacher run `run` (its task's kind of model)."""
    return task_of(run.task).model(run.teacher, info, run).to(device)


def teacher_in_use(out: Path, preset: str, teacher: str) -> bool:
    """Another process is training (or loading) this teacher right now."""
    return RunLock(teacher_dir(out, preset, teacher)).held_elsewhere()


def get_teacher(preset: Preset, teacher: str, data: DataConfig, tcfg: TeacherConfig, *, out: Path,
                device: torch.device, context: RunContext = LOCAL, verify: bool = False,
                should_stop: Callable[[], bool] = lambda: False,
                dry_run: bool = False) -> Tuple[FeatureModel, TeacherManifest]:
    """A frozen, eval-mode teacher and its manifest; trains (and caches) it when needed. The
    teacher's directory is locked meanwhile: another process wanting it waits, then reuses it.

    `dry_run`: train, evaluate and write nothing; a released checkpoint is still loaded strictly, a
    teacher not trained yet is a freshly initialised one (manifest top1 None, with a note)."""
    if dry_run or tcfg.source == "checkpoint":     # reading needs no lock; _load_released locks to write
        return _get_teacher(preset, teacher, data, tcfg, out=out, device=device, context=context, verify=False,
                            should_stop=should_stop, dry_run=dry_run)
    main, log = context.dist.is_main, context.log
    lock = RunLock(teacher_dir(out, preset.name, teacher))
    if main:       # under torchrun, rank 0 holds the lock; the other ranks follow its decisions
        lock.acquire(on_wait=lambda owner: log(f"teacher {teacher}: waiting for process {owner} to finish it"))
    try:
        return _get_teacher(preset, teacher, data, tcfg, out=out, device=device, context=context, verify=verify,
                            should_stop=should_stop)
    finally:
        lock.release()


def _get_teacher(preset, teacher, data, tcfg, *, out, device, context, verify, should_stop, dry_run=False):
    if tcfg.source == "checkpoint":
        return _load_released(preset, teacher, data, tcfg, out=out, device=device, context=context,
                              dry_run=dry_run)
    run = teacher_run(preset, teacher, data, tcfg, device)
    tdir = teacher_dir(out, preset.name, teacher)
    dist, log = context.dist, context.log
    main = dist.is_main
    manifest = read_manifest(tdir) if main else None
    manifest, reason = dist.broadcast((manifest, _stale_reason(manifest, tdir, run) if main else None))
    if dry_run and reason is not None:
        _, _, info = _loaders(run, device)
        fm = _fresh_model(run, info, device).eval().requires_grad_(False)
        return fm, TeacherManifest(source="train", architecture=teacher,
                                   note=f"freshly initialised ({reason}; dry run)")
    if reason is None:
        _, eval_loader, info = _loaders(run, device)
        fm = _fresh_model(run, info, device)
        fm.load_deployable_state(torch.load(tdir / WEIGHTS, map_location=device, weights_only=True))
        fm.eval().requires_grad_(False)
        if verify:
            to_training_layout(fm, run)      # the layout it was scored in at training time
            top1 = task_of(run.task).evaluate(fm, eval_loader, device, autocast_for(run.precision, device))[run.metric]
            tolerance = verification_tolerance(run.task, run.precision, device, info.num_test)
            if abs(top1 - manifest.top1) > tolerance:
                raise UsageError(f"teacher {tdir / WEIGHTS} evaluates to {top1:.2f}% but its manifest says "
                                 f"{manifest.top1:.2f}% (tolerance {tolerance:.2f}); delete {tdir} to retrain it")
            log(f"teacher {teacher}: verified, {_label(run.metric)} {top1:.2f}% (manifest {manifest.top1:.2f}%, "
                f"tolerance {tolerance:.2f})")
        _check_floor(manifest.top1, tcfg, tdir / WEIGHTS)
        return fm, manifest
    log(f"teacher {teacher}: training ({reason}); recipe {run.hash()}")
    # One training dir per recipe: an interrupted training resumes, a changed recipe starts afresh.
    trainer = Trainer(run, tdir / f"train-{run.hash()}", device=device, context=context, label=f"teacher {teacher}",
                      should_stop=should_stop)
    record = trainer.fit()
    fm = trainer.distiller.student.eval().requires_grad_(False)
    if not main:                # the weights are rank 0's (DDP keeps them equal); it writes the cache
        manifest = dist.broadcast(None)
        _check_floor(manifest.top1, tcfg, tdir / WEIGHTS)
        return fm, manifest
    state = {k: v.detach().cpu() for k, v in trainer.distiller.student_state().items()}
    atomic_torch_save(tdir / WEIGHTS, state)
    manifest = TeacherManifest.trained(run, record, num_classes=trainer.info.num_classes, file=WEIGHTS,
                                       sha256=sha256_file(tdir / WEIGHTS))
    write_manifest(tdir, manifest)
    dist.broadcast(manifest)
    log(f"teacher {teacher}: {_label(manifest.metric)} {manifest.top1:.2f}% in {manifest.wall_s:.0f}s")
    _check_floor(manifest.top1, tcfg, tdir / WEIGHTS)
    return fm, manifest


FLIP_SHARE = {"fp32": 0.0005, "tf32": 0.001, "bf16": 0.005}   # predictions that may flip between two GPU scorings


def verification_tolerance(task: str, precision: str, device, num_test: int) -> float:
    """How far (points of the headline) a re-scoring of a cached teacher may land from its manifest
    before `teach` refuses it. The weights are already checked bit for bit (sha256) and the recipe by
    its hash, so what is left is the evaluation's own arithmetic: on a CPU in fp32 it is reproducible
    (0.05, the printed precision); on a GPU, kernels chosen by autotuning and reduction order move
    borderline predictions: a share FLIP_SHARE[precision] of the test set, plus 2, may flip (fp32:
    0.05 %, bf16: 0.5 %); detection's mAP adds non-deterministic NMS ties: at least 0.3 points."""
    if device.type == "cpu" and precision == "fp32":
        return 0.05
    tolerance = 100 * (FLIP_SHARE.get(precision, FLIP_SHARE["bf16"]) * num_test + 2) / max(num_test, 1)
    return max(tolerance, 0.3) if task == "detection" else max(tolerance, 0.05)


def _label(metric: str) -> str:
    """How a log line names a teacher's headline: top-1, or mAP (detection)."""
    return {"top1": "top-1", "map": "mAP"}.get(metric, metric)


def _loaders(run: RunConfig, device):
    return task_of(run.task).loaders(run, batch_size=run.recipe.batch_size, device=device)


def teacher_cached(preset: Preset, teacher: str, data: DataConfig, tcfg: TeacherConfig, *, out: Path, device) -> bool:
    """Whether `get_teacher` would load this trained teacher from its cache instead of training it
    (released checkpoints are never "cached": they are loaded, and evaluated once per file)."""
    if tcfg.source == "checkpoint":
        return False
    tdir = teacher_dir(out, preset.name, teacher)
    return _stale_reason(read_manifest(tdir), tdir, teacher_run(preset, teacher, data, tcfg, device)) is None


def _stale_reason(manifest: Optional[TeacherManifest], tdir: Path, run: RunConfig):
    """Why the cache must be (re)built, or None. `read_manifest` gave None for a missing or half-written
    manifest ("not cached") and raised for one of another schema, which is never overwritten."""
    if manifest is None:
        return "not cached"
    if manifest.recipe_hash != run.hash():
        return "recipe changed"
    if not (tdir / WEIGHTS).exists() or sha256_file(tdir / WEIGHTS) != manifest.sha256:
        return "weights missing or corrupt"
    return None


def _check_floor(top1: float, tcfg: TeacherConfig, path: Path):
    if top1 < tcfg.min_top1:
        raise UsageError(f"teacher {path} has top-1 {top1:.2f}% < teacher.min_top1 {tcfg.min_top1}; "
                         f"refusing to distil from it")


def teacher_table(manifests: List[TeacherManifest]) -> str:
    """`kdbench teach`'s summary: each teacher's top-1 beside the published one, warnings loud."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)
    lines = [f"{'teacher':34s} {'top-1':>6s} {'published':>10s} {'gap':>6s}  weights"]
    for m in manifests:
        pub = f"{m.published_top1:.2f} {m.published_src}" if m.published_top1 is not None else "-"
        lines.append(f"{m.architecture:34s} {num(m.top1, '6.2f')} {pub:>10s} "
                     f"{num(m.published_gap, '+6.2f')}  {m.weights or 'trained by kdbench'}")
    lines += [f"WARNING: {m.architecture}: {m.warning}" for m in manifests if m.warning]
    return "\n".join(lines)


PUBLISHED_TOLERANCE = 1.0   # top-1 points between a released teacher and its paper before a warning


def _load_released(preset, teacher, data, tcfg, *, out, device, context, dry_run=False):
    """Load a released teacher checkpoint (e.g. OFA's CIFAR-100 teachers) strictly, evaluate it once
    per file (sha256) and compare it with the published teacher accuracy."""
    log = context.log
    root = tcfg.checkpoint_dir or os.environ.get("KDBENCH_TEACHERS")
    if not root:
        raise UsageError(f"preset '{preset.name}' loads teachers from checkpoints: pass "
                         f"--set teacher.checkpoint_dir=DIR or set $KDBENCH_TEACHERS")
    paper = {v: k for k, v in preset.models.items()}.get(teacher, teacher)
    path = Path(root) / tcfg.files.get(paper, tcfg.file_pattern.format(model=paper))
    if not path.is_file():
        raise UsageError(f"teacher checkpoint {path} not found (expected for {paper}; "
                         f"README.md, 'Paper preset', lists the files)")
    run = teacher_run(preset, teacher, data, dataclasses.replace(tcfg, source="checkpoint"), device)
    state, weights = read_weights(path, use_ema=tcfg.use_ema)
    _, eval_loader, info = _loaders(run, device)
    fm = task_of(run.task).load_released(teacher, info, run, state, path, eval_loader).to(device)
    fm.eval().requires_grad_(False)
    digest = sha256_file(path)
    tdir = teacher_dir(out, preset.name, teacher)

    def fresh(manifest):
        return manifest is not None and manifest.sha256 == digest and manifest.recipe_hash == run.hash()

    manifest = read_manifest(tdir)
    if not fresh(manifest) and dry_run:    # a dry run proves the file loads; `kdbench teach` evaluates it
        return fm, TeacherManifest(source="checkpoint", architecture=teacher, file=str(path), weights=weights,
                                   note="loaded, not evaluated (dry run)")
    if not fresh(manifest):
        with _main_rank_lock(tdir, teacher, context):
            manifest = read_manifest(tdir)           # another process may have evaluated it meanwhile
            if not fresh(manifest):
                manifest = _evaluate_released(fm, eval_loader, run, info, path, digest, weights, paper, log)
                if context.dist.is_main:
                    write_manifest(tdir, manifest)
    if manifest.warning:
        log(f"WARNING: teacher {teacher}: {manifest.warning}")
    _check_floor(manifest.top1, tcfg, path)
    return fm, manifest


@contextlib.contextmanager
def _main_rank_lock(tdir: Path, teacher: str, context: RunContext):
    """The teacher directory's lock, held by rank 0 (the other ranks follow its decisions)."""
    lock = RunLock(tdir)
    if context.dist.is_main:
        lock.acquire(on_wait=lambda owner: context.log(f"teacher {teacher}: waiting for process {owner} to finish it"))
    try:
        yield
    finally:
        lock.release()


def _evaluate_released(fm, eval_loader, run, info, path, digest, weights, paper, log) -> TeacherManifest:
    """The manifest of a released teacher: its headline metric in the run's precision, beside the paper's."""
    log(f"teacher {run.teacher}: evaluating {path} ({weights} weights, {run.precision})")
    device = next(fm.parameters()).device
    metrics = task_of(run.task).evaluate(fm, eval_loader, device, autocast_for(run.precision, device))
    headline = metrics[run.metric]
    return TeacherManifest.released(run, dataset=info.name, num_classes=info.num_classes, top1=headline,
                                    top5=metrics.get("top5"), metric=run.metric, file=str(path), sha256=digest,
                                    weights=weights, **published_check(info.name, paper, run.teacher, headline))


def published_check(dataset: str, paper: str, model: str, top1: float) -> dict:
    """The published top-1 of a released teacher (benchmarks/published.yaml) and a warning when the
    measured one is more than PUBLISHED_TOLERANCE points away. Empty for models no paper reports."""
    entry = published_data().get(dataset, {}).get("teachers", {}).get(paper)
    if entry is None or model != paper:
        return {}
    gap = round(top1 - entry["top1"], 2)
    warning = None
    if abs(gap) > PUBLISHED_TOLERANCE:
        warning = (f"top-1 {top1:.2f}% is {abs(gap):.2f} points {'below' if gap < 0 else 'above'} the published "
                   f"{entry['top1']:.2f}% ({entry['src']}); check the file, the data and teacher.use_ema before "
                   f"distilling from it")
    return {"published_top1": entry["top1"], "published_src": entry["src"], "published_gap": gap, "warning": warning}
