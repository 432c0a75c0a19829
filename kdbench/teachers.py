"""Teacher zoo: train (small presets) or load (paper presets), cache with a manifest, verify."""

import dataclasses
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Tuple

import timm
import torch

from . import distributed
from .config import Preset, RecipeConfig, RunConfig, TeacherConfig
from .data import DataConfig, build_loaders
from .engine import Trainer, evaluate
from .errors import UsageError
from .models import FeatureModel, create_feature_model, create_model, family_of
from .models.families import recipe_kind
from .locks import RunLock
from .results import atomic_torch_save, atomic_write_json
from distillers.base import TaskConfig

MANIFEST = "manifest.json"
WEIGHTS = "model.pt"


@lru_cache(maxsize=None)
def model_kind(name: str, img_size: int) -> str:
    """'cnn' or 'vit_mlp': which of the preset's recipes trains this model (the family table's choice)."""
    return recipe_kind(family_of(create_model(name, num_classes=10, in_chans=3, img_size=img_size)))


def teacher_run(preset: Preset, teacher: str, data: DataConfig, tcfg: TeacherConfig) -> RunConfig:
    """The RunConfig that trains `teacher` from scratch (the `vanilla` method)."""
    recipe: RecipeConfig = getattr(tcfg, model_kind(teacher, data.img_size))
    if tcfg.train_limit is not None:
        data = dataclasses.replace(data, train_limit=tcfg.train_limit)
    return RunConfig(preset=preset.name, teacher=teacher, student=teacher, seed=tcfg.seed, distiller="vanilla",
                     distiller_config=TaskConfig(), recipe=recipe, data=data, teacher_config=tcfg)


def teacher_dir(out: Path, preset: str, teacher: str) -> Path:
    return Path(out) / "teachers" / preset / teacher


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fresh_model(teacher: str, info, device) -> FeatureModel:
    fm = create_feature_model(teacher, num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.img_size)
    return fm.to(device)


def teacher_in_use(out: Path, preset: str, teacher: str) -> bool:
    """Another process is training (or loading) this teacher right now."""
    return RunLock(teacher_dir(out, preset, teacher)).held_elsewhere()


def get_teacher(preset: Preset, teacher: str, data: DataConfig, tcfg: TeacherConfig, *, out: Path,
                device: torch.device, log: Callable[[str], None], verify: bool = False,
                should_stop: Callable[[], bool] = lambda: False) -> Tuple[FeatureModel, dict]:
    """A frozen, eval-mode teacher and its manifest; trains (and caches) it when needed. The
    teacher's directory is locked meanwhile: another process wanting it waits, then reuses it."""
    main = distributed.info().is_main
    lock = RunLock(teacher_dir(out, preset.name, teacher))
    if main:       # under torchrun, rank 0 holds the lock; the other ranks follow its decisions
        lock.acquire(on_wait=lambda owner: log(f"teacher {teacher}: waiting for process {owner} to finish it"))
    try:
        return _get_teacher(preset, teacher, data, tcfg, out=out, device=device, log=log, verify=verify,
                            should_stop=should_stop)
    finally:
        lock.release()


def _get_teacher(preset, teacher, data, tcfg, *, out, device, log, verify, should_stop):
    if tcfg.source == "checkpoint":
        return _load_released(preset, teacher, data, tcfg, out=out, device=device, log=log)
    run = teacher_run(preset, teacher, data, tcfg)
    tdir = teacher_dir(out, preset.name, teacher)
    main = distributed.info().is_main
    manifest = _read_manifest(tdir) if main else None
    manifest, reason = distributed.broadcast((manifest, _stale_reason(manifest, tdir, run) if main else None))
    if reason is None:
        _, eval_loader, info = _loaders(run, device)
        fm = _fresh_model(teacher, info, device)
        fm.model.load_state_dict(torch.load(tdir / WEIGHTS, map_location=device, weights_only=True))
        fm.eval().requires_grad_(False)
        if verify:
            top1 = evaluate(fm.logits, eval_loader, device, torch.no_grad)["top1"]
            if abs(top1 - manifest["top1"]) > 0.05:
                raise UsageError(f"teacher {tdir / WEIGHTS} evaluates to {top1:.2f}% but its manifest says "
                                 f"{manifest['top1']:.2f}%; delete {tdir} to retrain it")
            log(f"teacher {teacher}: verified, top-1 {top1:.2f}%")
        _check_floor(manifest["top1"], tcfg, tdir / WEIGHTS)
        return fm, manifest
    log(f"teacher {teacher}: training ({reason}); recipe {run.hash()}")
    # One training dir per recipe: an interrupted training resumes, a changed recipe starts afresh.
    trainer = Trainer(run, tdir / f"train-{run.hash()}", device=device, log=log, label=f"teacher {teacher}",
                      should_stop=should_stop)
    record = trainer.fit()
    fm = trainer.distiller.student.eval().requires_grad_(False)
    if not main:                # the weights are rank 0's (DDP keeps them equal); it writes the cache
        manifest = distributed.broadcast(None)
        _check_floor(manifest["top1"], tcfg, tdir / WEIGHTS)
        return fm, manifest
    state = {k: v.detach().cpu() for k, v in trainer.distiller.student_state().items()}
    atomic_torch_save(tdir / WEIGHTS, state)
    manifest = {"architecture": teacher, "dataset": record["dataset"], "num_classes": trainer.info.num_classes,
                "top1": record["top1"], "top5": record["top5"], "recipe_hash": run.hash(),
                "recipe": run.to_dict(), "timm_version": timm.__version__, "torch_version": torch.__version__,
                "sha256": sha256_file(tdir / WEIGHTS), "file": WEIGHTS, "epochs": record["epochs"],
                "wall_s": record["wall_s"], "train_img_per_s": record["train_img_per_s"],
                "params": record["student_params"]}
    atomic_write_json(tdir / MANIFEST, manifest)
    distributed.broadcast(manifest)
    log(f"teacher {teacher}: top-1 {manifest['top1']:.2f}% in {manifest['wall_s']:.0f}s")
    _check_floor(manifest["top1"], tcfg, tdir / WEIGHTS)
    return fm, manifest


def _loaders(run: RunConfig, device):
    return build_loaders(run.data, batch_size=run.recipe.batch_size, device=device, seed=run.seed,
                         eval_batch_size=run.recipe.eval_batch_size)


def _read_manifest(tdir: Path):
    try:
        return json.loads((tdir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _stale_reason(manifest, tdir: Path, run: RunConfig):
    if manifest is None:
        return "not cached"
    if manifest.get("recipe_hash") != run.hash():
        return "recipe changed"
    if not (tdir / WEIGHTS).exists() or sha256_file(tdir / WEIGHTS) != manifest.get("sha256"):
        return "weights missing or corrupt"
    return None


def _check_floor(top1: float, tcfg: TeacherConfig, path: Path):
    if top1 < tcfg.min_top1:
        raise UsageError(f"teacher {path} has top-1 {top1:.2f}% < teacher.min_top1 {tcfg.min_top1}; "
                         f"refusing to distil from it")


def _load_released(preset, teacher, data, tcfg, *, out, device, log):
    """Load a released teacher checkpoint (e.g. OFA's CIFAR-100 teachers), strictly."""
    root = tcfg.checkpoint_dir or os.environ.get("KDBENCH_TEACHERS")
    if not root:
        raise UsageError(f"preset '{preset.name}' loads teachers from checkpoints: pass "
                         f"--set teacher.checkpoint_dir=DIR or set $KDBENCH_TEACHERS")
    paper = {v: k for k, v in preset.models.items()}.get(teacher, teacher)
    path = Path(root) / tcfg.files.get(paper, tcfg.file_pattern.format(model=paper))
    if not path.is_file():
        raise UsageError(f"teacher checkpoint {path} not found (expected for {paper})")
    run = teacher_run(preset, teacher, data, dataclasses.replace(tcfg, source="checkpoint"))
    _, eval_loader, info = _loaders(run, device)
    fm = _fresh_model(teacher, info, device)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)   # never unpickles code
    except Exception as exc:
        raise UsageError(f"teacher checkpoint {path} is unreadable: {exc.__class__.__name__}") from exc
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    filter_fn = getattr(__import__(type(fm.model).__module__, fromlist=["_"]), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, fm.model)
    try:
        fm.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"teacher checkpoint {path} does not fit {teacher} with {info.num_classes} classes: "
                         f"{first}") from exc
    fm.eval().requires_grad_(False)
    digest = sha256_file(path)
    tdir = teacher_dir(out, preset.name, teacher)
    manifest = _read_manifest(tdir)
    if manifest is None or manifest.get("sha256") != digest or manifest.get("recipe_hash") != run.hash():
        log(f"teacher {teacher}: evaluating {path}")
        metrics = evaluate(fm.logits, eval_loader, device, torch.no_grad)
        manifest = {"architecture": teacher, "dataset": info.name, "num_classes": info.num_classes,
                    **metrics, "recipe_hash": run.hash(), "timm_version": timm.__version__,
                    "torch_version": torch.__version__, "sha256": digest, "file": str(path)}
        atomic_write_json(tdir / MANIFEST, manifest)
    _check_floor(manifest["top1"], tcfg, path)
    return fm, manifest
