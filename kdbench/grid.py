"""Pair sets, grid expansion and run directories."""

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

import torch

from .assets import read_yaml
from .config import COMPILE_MIN_STEPS, Preset, RunConfig, apply_overrides, build, run_flag
from .data import dataset_sizes
from .errors import UsageError, unknown_choice, user_error
from .models import recipe_kind_of
from .registry import DISTILLERS

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair in paper (timm) names, plus the named set it belongs to."""

    teacher: str
    student: str
    set: str

    def scaled(self, preset: Preset):
        return scaled_name(self.teacher, preset), scaled_name(self.student, preset)


@lru_cache(maxsize=None)
def _pair_table() -> Dict[str, tuple]:
    raw = read_yaml("pairs.yaml")
    return {bench: tuple(Pair(*row) for row in rows) for bench, rows in raw.items()}


def pair_sets() -> Dict[str, List[Pair]]:
    """`all` (the 12 CIFAR-100 pairs, paper order), its subsets, `imagenet` (15) and its subsets, `det`
    (the 2 COCO detection pairs)."""
    table = _pair_table()
    sets = {"all": list(table["cifar100"]), "imagenet": list(table["imagenet"]), "det": list(table["det"])}
    for pair in table["cifar100"] + table["imagenet"] + table["det"]:
        sets.setdefault(pair.set, []).append(pair)
    return sets


def scaled_name(paper_name: str, preset: Preset) -> str:
    if paper_name not in preset.models:
        raise UsageError(f"model '{paper_name}' has no member in preset '{preset.name}'; "
                         f"it maps: {', '.join(sorted(preset.models))}")
    return preset.models[paper_name]


def resolve_pairs(spec: str, preset: Preset) -> List[Pair]:
    """'all', a set name, or 'T:S' items (paper or preset-scale names), comma-separated."""
    sets = pair_sets()
    by_scaled = {v: k for k, v in preset.models.items()}
    pairs: List[Pair] = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        item = preset.pairs if item == "all" else item
        if ":" in item:
            t, s = (x.strip() for x in item.split(":", 1))
            t, s = by_scaled.get(t, t), by_scaled.get(s, s)
            for name in (t, s):
                if name not in preset.models:
                    raise unknown_choice(f"model at preset '{preset.name}'", name,
                                         list(preset.models) + list(preset.models.values()))
            pairs.append(Pair(t, s, "custom"))
        elif item in sets:
            pairs.extend(sets[item])
        else:
            raise unknown_choice("pair set", item, list(sets) + ["T:S"])
    if not pairs:
        raise UsageError("no pairs given; use --pairs all, a set name or TEACHER:STUDENT")
    for p in pairs:
        p.scaled(preset)  # every model must exist at this scale
    return list(dict.fromkeys(pairs))


def parse_seeds(spec: str) -> List[int]:
    """'3' -> [0, 1, 2]; '0,4,7' -> [0, 4, 7]."""
    try:
        if "," in spec:
            seeds = [int(s) for s in spec.split(",") if s.strip()]
        else:
            n = int(spec)
            if n < 1:
                raise ValueError
            seeds = list(range(n))
    except ValueError:
        raise UsageError(f"bad --seeds '{spec}': a count >= 1 (e.g. 3) or a list (e.g. 0,1,2)") from None
    if any(s < 0 for s in seeds):
        raise UsageError(f"bad --seeds '{spec}': seeds must be >= 0")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise UsageError(f"bad --seeds '{spec}': seed {twice[0]} is listed twice; list each seed once")
    return seeds


def run_dir(out: Path, preset: str, teacher: str, student: str, distiller: str, seed: int) -> Path:
    """`<out>/<preset>/<teacher>__<student>/<distiller>/seed<k>` (contract, docs/design.md §3)."""
    return Path(out) / preset / f"{teacher}__{student}" / distiller / f"seed{seed}"


def expand_runs(preset: Preset, pairs: List[Pair], distillers: List[str], seeds: List[int], *, data, teacher_cfg,
                overrides: Dict[str, object], compile_=False, device=None) -> List[RunConfig]:
    """One RunConfig per (pair, distiller, seed): the preset's recipe for the student's kind and its
    per-method defaults, then the `--set` overrides (validated here, before anything runs). The
    runs' precision is the recipe's on `device` (default: the CPU)."""
    configs = {name: distiller_config(name, preset, overrides, distillers) for name in distillers}
    deterministic = run_flag(overrides, "deterministic")
    runs = []
    for pair in pairs:
        teacher, student = pair.scaled(preset)
        recipe = apply_overrides(getattr(preset, recipe_kind_of(student, data.img_size)), overrides, "recipe")
        for name in distillers:
            try:
                budgeted, dcfg = at_budget(recipe, configs[name])
                compiled = resolve_compile(compile_, budgeted, data, device or _CPU, preset.task)
                runs.extend(RunConfig(preset=preset.name, teacher=teacher, student=student, seed=seed,
                                      distiller=name, distiller_config=dcfg, recipe=budgeted, data=data,
                                      teacher_config=teacher_cfg, compile=compiled,
                                      precision=recipe.precision_on(device or _CPU), task=preset.task,
                                      detector=preset.detector, student_init=preset.student,
                                      deterministic=deterministic) for seed in seeds)
            except ValueError as exc:
                raise user_error(exc, "run") from None
    return runs


COMPILED_TASKS = ("classification",)   # compile=auto: detection's data-dependent shapes were never tried compiled


def resolve_compile(flag, recipe, data, device, task: str = "classification") -> bool:
    """`compile=auto`: on for CUDA classification runs of at least COMPILE_MIN_STEPS steps (long enough
    to repay the compilation), off elsewhere: on CPUs, and for detection (torchvision's Faster R-CNN has
    data-dependent shapes; compiled under DDP with the unused-parameter search it was never measured);
    true/false as given."""
    if flag != "auto":
        return bool(flag)
    steps = recipe.epochs * (dataset_sizes(data)[0] // recipe.batch_size)
    return device.type == "cuda" and task in COMPILED_TASKS and steps >= COMPILE_MIN_STEPS


def at_budget(recipe, distiller_config):
    """The recipe and distiller config of a run trained for `recipe.budget` times the recipe's
    budget: epochs (rounded, at least 1), the recipe's warm-up and a distiller's `warmup_epochs`
    scale by it, so every schedule keeps its shape. Applied once, here, where a grid's runs are
    built; the scaled values and the budget are what a record shows."""
    b = recipe.budget
    if b == 1:
        return recipe, distiller_config
    recipe = dataclasses.replace(recipe, epochs=max(1, round(recipe.epochs * b)), warmup_epochs=recipe.warmup_epochs * b)
    if any(f.name == "warmup_epochs" for f in dataclasses.fields(distiller_config)):
        distiller_config = dataclasses.replace(distiller_config, warmup_epochs=distiller_config.warmup_epochs * b)
    return recipe, distiller_config


def distiller_config(name: str, preset: Preset, overrides: Dict[str, object], grid: List[str]):
    """The config of distiller `name`: its defaults, the preset's, then the `--set` keys that apply.

    `distiller.FIELD=v` applies to every distiller of the grid that has FIELD (an error if none
    has it); `distiller.NAME.FIELD=v` to distiller NAME only. A bad value is a UsageError (exit 2):
    `build` and `apply_overrides` turn the config's ValueError into one.
    """
    cls = DISTILLERS.get(name, preset.task)
    cfg = build(cls.Config, dict(preset.distillers.get(name, {})), f"distiller {name}")
    mine = {}
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] != "distiller" or len(parts) < 2:
            continue
        if parts[1] in DISTILLERS:
            if len(parts) < 3:
                raise UsageError(f"--set {key}: name a field, e.g. distiller.{parts[1]}.<field>=value")
            if parts[1] not in grid:
                raise UsageError(f"--set {key}: distiller '{parts[1]}' is not in this grid ({', '.join(grid)})")
            if parts[1] == name:
                mine["distiller." + ".".join(parts[2:])] = value
        elif parts[1] in _fields(cls.Config):
            mine[key] = value
        elif not any(parts[1] in _fields(DISTILLERS.get(n, preset.task).Config) for n in grid):
            valid = sorted(set().union(*(_fields(DISTILLERS.get(n, preset.task).Config) for n in grid)))
            raise unknown_choice(f"key '{key}' for {', '.join(grid)}; field", parts[1], valid)
    return apply_overrides(cfg, mine, "distiller")


def _fields(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}
