"""Typed configuration: recipes, presets (YAML) and `--set a.b=c` overrides."""

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import yaml

from .assets import asset
from .data import DataConfig
from .detection.config import DetectorConfig
from .errors import UsageError, unknown_choice, user_error
from .models.zoo import member_definition
from .registry import DISTILLERS
from .student_init import StudentInitConfig
from .validators import (at_least, in_range, is_hashed, non_negative, omitted_at_default, one_of, opt_in, positive,
                         unhashed)

OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "tf32", "bf16")     # tf32: fp32 storage, TF32 matmuls and convolutions (Ampere+ GPUs)
TASK_METRICS = {"classification": "top1", "detection": "map"}      # a task's headline metric
SCHEDULES = ("cosine", "step", "multistep")


@dataclass
class RecipeConfig:
    """The training recipe of one run (OFA/PAT's cnn.yaml / vit_mlp.yaml at paper scale)."""

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-4
    min_lr: float = 0.0
    schedule: str = "cosine"         # cosine | step (x step_gamma every step_epochs) | multistep, per step
    step_epochs: int = 30
    step_gamma: float = 0.1
    label_smoothing: float = 0.1
    clip_grad: float = 0.0           # max grad norm; 0 = off
    ema_decay: float = 0.0           # student EMA; 0 = off
    mixup: float = 0.0               # Beta alpha; 0 = off
    cutmix: float = 0.0
    amp: bool = True                 # bf16 autocast on CUDA devices with bf16 (the run's `precision`)
    channels_last: bool = True       # for families that profit (resnet, mobilenetv2)
    eval_batch_size: int = 1024      # on CUDA; CPUs evaluate in batches of at most 128 (faster)
    log_every: int = unhashed(0)     # steps per training-curve point (metrics file); 0 = about 50 per run
    budget: float = opt_in(1.0)      # training budget: a grid scales epochs and warm-ups by it (grid.at_budget)
    milestones: Tuple[float, ...] = opt_in(())   # multistep: x step_gamma at these fractions of training
    eval_every: int = opt_in(1)      # epochs between test-set evaluations; the final epoch is always evaluated

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size", "step_epochs", "eval_every"):
            at_least(f"recipe.{name}", getattr(self, name), 1)
        one_of("recipe.optimizer", self.optimizer, OPTIMIZERS)
        one_of("recipe.schedule", self.schedule, SCHEDULES)
        positive("recipe.lr", self.lr)
        non_negative("recipe.log_every", self.log_every)
        positive("recipe.budget", self.budget)
        for name in ("weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "clip_grad", "mixup", "cutmix"):
            non_negative(f"recipe.{name}", getattr(self, name))
        in_range("recipe.label_smoothing", self.label_smoothing, 0, 1, hi_open=True)
        in_range("recipe.ema_decay", self.ema_decay, 0, 1, hi_open=True)
        for m in self.milestones:
            in_range("recipe.milestones", m, 0, 1, hi_open=True)
        if (self.schedule == "multistep") != bool(self.milestones):
            raise ValueError("recipe.milestones (fractions of training in (0, 1)) go with, and only with, "
                             "recipe.schedule=multistep")

    def precision_on(self, device) -> str:
        """The arithmetic of a run on `device`: bf16 autocast where the recipe asks for AMP and the
        device supports it (CUDA); else on an Ampere+ GPU tf32 (fp32 tensors, TF32 matmuls and
        convolutions: `engine.configure_backends` turns them on); else fp32. It is part of the run's
        configuration and hash, so a GPU "fp32" run never shares a hash with a CPU fp32 run."""
        if device.type == "cuda":
            if self.amp and torch.cuda.is_bf16_supported():
                return "bf16"
            if torch.cuda.get_device_capability(device)[0] >= 8:
                return "tf32"
        return "fp32"


@dataclass
class TeacherConfig:
    """Where teachers come from: trained by kdbench (cached) or loaded from checkpoints."""

    source: str = "train"                    # train | checkpoint
    checkpoint_dir: Optional[str] = unhashed(None)   # for source=checkpoint ($KDBENCH_TEACHERS if unset)
    file_pattern: str = "{model}_cifar100.pth"
    files: Dict[str, str] = field(default_factory=dict)   # paper model -> file, overrides the pattern
    seed: int = 0
    train_limit: Optional[int] = None        # teachers may see more data than students (None = same)
    min_top1: float = 0.0                    # refuse to distil from a weaker teacher
    use_ema: bool = False                    # checkpoints: EMA weights when present (OFA's --use-ema-teacher)
    cnn: RecipeConfig = field(default_factory=RecipeConfig)
    vit_mlp: RecipeConfig = field(default_factory=RecipeConfig)
    # Detection checkpoints trained on other inputs (detectron2's INPUT.FORMAT, PIXEL_MEAN, PIXEL_STD; 0-255
    # units, in pixel_format's channel order): converted exactly into the loaded detector (detection/released.py).
    pixel_format: str = opt_in("RGB")                 # RGB | BGR
    pixel_mean: Tuple[float, ...] = opt_in(())        # () = the students' normalisation
    pixel_std: Tuple[float, ...] = opt_in(())

    def __post_init__(self):
        one_of("teacher.source", self.source, ("train", "checkpoint"))
        one_of("teacher.pixel_format", self.pixel_format, ("RGB", "BGR"))
        if len(self.pixel_mean) != len(self.pixel_std):
            raise ValueError("teacher.pixel_mean and teacher.pixel_std need one value per channel each")


@dataclass
class Preset:
    name: str
    description: str
    data: DataConfig
    models: Dict[str, str]                   # paper timm name -> member at this scale
    cnn: RecipeConfig                        # recipe for CNN students
    vit_mlp: RecipeConfig                    # recipe for ViT/MLP students
    teacher: TeacherConfig
    distillers: Dict[str, dict] = field(default_factory=dict)   # per-method defaults
    seeds: int = 3
    pairs: str = "all"                       # what `--pairs all` means here (imagenet: the 15 pairs)
    task: str = "classification"             # classification | detection: every run and teacher of the preset
    detector: DetectorConfig = DetectorConfig()   # detection: the Faster R-CNN's sizes and sampling
    student: StudentInitConfig = StudentInitConfig()   # where students start (scratch or checkpoints)


@dataclass
class RunConfig:
    """Everything that determines one run; `to_dict()` is the record's `config` and the input of its
    hash: every field but those marked `unhashed` (where files live), recursively. `to_dict(full=True)`
    keeps them too (to send a cell to another process); `from_dict` inverts either."""

    preset: str
    teacher: str                 # timm names at the preset's scale
    student: str
    seed: int
    distiller: str
    distiller_config: object
    recipe: RecipeConfig
    data: DataConfig
    teacher_config: TeacherConfig
    compile: bool = False
    precision: str = "fp32"      # arithmetic of training and evaluation: fp32 | tf32 (GPU) | bf16 (autocast)
    task: str = opt_in("classification")     # classification | detection (a preset's task)
    detector: DetectorConfig = opt_in(DetectorConfig())   # detection: the preset's detector sizes
    student_init: StudentInitConfig = opt_in(StudentInitConfig())   # the preset's `student:` section
    deterministic: bool = False  # deterministic CUDA kernels, no cuDNN autotuning (no effect on a CPU)

    def __post_init__(self):
        one_of("precision", self.precision, PRECISIONS)
        one_of("task", self.task, TASK_METRICS)
        non_negative("seed", self.seed)

    @property
    def metric(self) -> str:
        """The task's headline metric: top1 (classification) or map (detection, COCO mAP@[.5:.95])."""
        return TASK_METRICS[self.task]

    def to_dict(self, full: bool = False) -> dict:
        """The run as JSON-ready data: `distiller` holds the method's name and its config; `models`
        (derived: the definitions of kdbench members) is recorded, never read back. Fields marked
        `unhashed` are left out unless `full`."""
        d = {}
        for f in dataclasses.fields(self):
            if f.name == "distiller_config" or not (full or (is_hashed(f) and not omitted_at_default(
                    f, getattr(self, f.name)))):
                continue
            if f.name == "distiller":
                d["distiller"] = {"name": self.distiller, **_plain(self.distiller_config, full)}
            else:
                d[f.name] = _plain(getattr(self, f.name), full)
        d["models"] = {"teacher": member_definition(self.teacher), "student": member_definition(self.student)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """The inverse of `to_dict(full=True)`; from `to_dict()`, unhashed fields take their defaults
        (the same hash). The distiller's config class comes from the registry."""
        raw = {k: v for k, v in d.items() if k != "models"}
        method = dict(raw.pop("distiller"))
        name = method.pop("name")
        config = build(DISTILLERS.get(name, raw.get("task", "classification")).Config, method, f"distiller {name}")
        return build(cls, {**raw, "distiller": name, "distiller_config": config}, "run config")

    def hash(self) -> str:
        return config_hash(self.to_dict())


def config_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _plain(value, full: bool):
    """`dataclasses.asdict`, less the unhashed fields (recursively) unless `full`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), full) for f in dataclasses.fields(value)
                if full or (is_hashed(f) and not omitted_at_default(f, getattr(value, f.name)))}
    if isinstance(value, tuple) and hasattr(value, "_fields"):      # a named tuple
        return type(value)(*(_plain(v, full) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, full) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v, full) for k, v in value.items()}
    return value


# -- presets ------------------------------------------------------------------------------
def preset_names() -> List[str]:
    files = asset("presets").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml"))


def load_preset(name: str) -> Preset:
    """A built-in preset by name, or a user preset from a YAML file (a path ending in .yaml/.yml)."""
    if name.endswith((".yaml", ".yml")):
        try:
            text = Path(name).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read preset file {name}: {exc.strerror if isinstance(exc, OSError) else exc}; "
                             f"built-in presets: {', '.join(preset_names())}") from None
    elif name in preset_names():
        text = asset("presets", f"{name}.yaml").read_text()
    else:
        raise unknown_choice("preset", name, preset_names() + ["FILE.yaml"])
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).replace("\n", " ")
        raise UsageError(f"preset '{name}' is not valid YAML: {first}") from None
    preset = build(Preset, raw, f"preset {name}")
    if not preset.name:
        raise UsageError(f"preset '{name}' needs a name")
    return preset


def build(cls, raw, where: str):
    """Instantiate dataclass `cls` from a YAML mapping, recursively, with type checks; a bad value
    (the config's ValueError) is the user's error."""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise unknown_choice(f"key in {where}", sorted(unknown)[0], names)
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise user_error(exc, where) from None


def coerce(value, tp, key: str):
    """Check/convert a YAML value to type `tp` (bool, int, float, str, Optional, tuple, dict, dataclass)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (dict, Dict) or tp is dict:
        if not isinstance(value, dict):
            raise UsageError(f"bad value {value!r} for {key}: must be a mapping")
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"bad value {value!r} for {key}: must be a list")
        args = typing.get_args(tp)
        inner = args[0] if args else None
        return tuple(coerce(v, inner, key) for v in value) if inner not in (None, Ellipsis) else tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise UsageError(f"bad value {value!r} for {key}: must be {tp.__name__}")


# -- --set overrides ----------------------------------------------------------------------
SECTIONS = ("distiller", "recipe", "data", "teacher", "student", "detector", "compile", "deterministic")


def parse_overrides(items: List[str]) -> Dict[str, object]:
    """["a.b=1", ...] -> {"a.b": 1}; values are parsed as YAML scalars (true, 3, 1e-3, text)."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"malformed --set '{item}': expected key=value, e.g. recipe.epochs=3")
        if key.split(".")[0] not in SECTIONS:
            raise unknown_choice("--set section", key.split(".")[0], SECTIONS)
        out[key] = _scalar(text)
    return out


def run_flag(overrides: Dict[str, object], name: str) -> bool:
    """A top-level boolean `--set NAME=true|false` (default false): `compile` wraps the training forward
    in torch.compile (it also takes `auto`, see compile_flag); `deterministic` asks for deterministic
    CUDA kernels (engine.configure_backends)."""
    value = overrides.get(name, False)
    if not isinstance(value, bool):
        choices = "true, false or auto" if name == "compile" else "true or false"
        raise UsageError(f"bad value {value!r} for {name}: must be {choices}")
    return value


# `compile=auto` (the default) compiles CUDA runs of at least this many steps. Measured on CPU
# (benchmarks/README.md, "torch.compile on CPU"): 61-86 s of compilation repaid after 1,600-6,000 steps
# there, so CPU runs stay eager; GPUs compile in similar time and gain more per step.
COMPILE_MIN_STEPS = 5000


def compile_flag(overrides: Dict[str, object]):
    """`--set compile=true|false|auto` (default auto): True, False, or "auto" (grid.resolve_compile)."""
    value = overrides.get("compile", "auto")
    if value == "auto":
        return "auto"
    return run_flag(overrides, "compile")


def _scalar(text: str):
    """YAML scalar, except that numbers such as 1e-3 (a string in YAML 1.1) are numbers."""
    for number in (int, float):
        try:
            return number(text.strip())
        except ValueError:
            pass
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(obj, overrides: Dict[str, object], section: str):
    """Return a copy of dataclass `obj` with the `section.`-prefixed overrides applied."""
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] != section:
            continue
        if len(parts) < 2:
            raise UsageError(f"--set {key}: name a field, e.g. {section}.<field>=value")
        obj = _set_path(obj, parts[1:], value, key)
    return obj


def _set_path(obj, parts, value, key):
    names = {f.name for f in dataclasses.fields(obj)}
    if parts[0] not in names:
        raise unknown_choice(f"key '{key}'; field", parts[0], names)
    tp = typing.get_type_hints(type(obj))[parts[0]]
    if len(parts) > 1:
        child = getattr(obj, parts[0])
        if not dataclasses.is_dataclass(child):
            raise UsageError(f"--set {key}: '{parts[0]}' has no sub-fields")
        new = _set_path(child, parts[1:], value, key)
    else:
        new = coerce(value, tp, key)
    try:
        return dataclasses.replace(obj, **{parts[0]: new})
    except (TypeError, ValueError) as exc:
        raise user_error(exc, f"--set {key}", key) from None
