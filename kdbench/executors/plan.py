"""A validated grid: the cells to run and where their results go, checked before anything is
written, and serialisable so that worker processes and Ray tasks get exactly the driver's cells."""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from ..config import (Preset, RunConfig, TeacherConfig, apply_overrides, build, compile_flag, load_preset,
                      parse_overrides)
from ..data import DataConfig, resolve_root
from ..distributed import SINGLE, DistInfo
from ..engine import resolve_device
from ..errors import UsageError
from ..grid import Pair, expand_runs, parse_seeds, resolve_pairs, run_dir
from ..registry import load_plugin
from ..student_init import StudentInitConfig, student_file

PLAN_SCHEMA = 1


@dataclass
class Plan:
    """The grid's cells (one RunConfig per pair x distiller x seed) and their context: the preset,
    the data and teacher settings the cells share, the device, the results tree and the plugins
    that define the cells' distillers."""

    preset: Preset
    data: DataConfig
    teacher_cfg: object                  # TeacherConfig
    device: torch.device
    device_name: str                     # as the user gave it ("auto"): what a worker process resolves
    out: Path
    runs: List[RunConfig]
    teachers: List[str]                  # teachers of the pairs, in pair order
    seeds: List[int]
    preset_ref: str = ""                 # the built-in preset's name or the preset file's absolute path
    plugins: List[str] = field(default_factory=list)
    fresh: bool = False

    @classmethod
    def build(cls, *, preset: str, pairs: str, distillers: Sequence[str], seeds: Optional[str] = None,
              overrides: Sequence[str] = (), data_root: Optional[str] = None, device: str = "auto",
              out: str = "runs", plugins: Sequence[str] = (), fresh: bool = False,
              dist: DistInfo = SINGLE, need_data: bool = True) -> "Plan":
        """Validate everything a grid needs (preset, pairs, `--set` keys, the data present unless
        `need_data` is false, as for `bench` on random batches) and expand it."""
        for module in plugins:
            load_plugin(module)
        _check_out(out)
        preset_obj = load_preset(preset)
        parsed = parse_overrides(list(overrides))
        preset_obj = dataclasses.replace(preset_obj, student=apply_overrides(preset_obj.student, parsed, "student"),
                                         detector=apply_overrides(preset_obj.detector, parsed, "detector"))
        pair_list: List[Pair] = resolve_pairs(pairs, preset_obj)
        data = apply_overrides(preset_obj.data, parsed, "data")
        if data_root is not None:
            data = dataclasses.replace(data, root=data_root)
        if need_data:
            resolve_root(data.dataset, data.root)      # missing data: fail now, write nothing
            if preset_obj.student.source == "checkpoint" and distillers:      # missing student weights too
                for pair in pair_list:
                    student_file(preset_obj.student, pair.scaled(preset_obj)[1])
        else:                                          # random batches (bench): weights do not matter
            preset_obj = dataclasses.replace(preset_obj, student=StudentInitConfig())
        teacher_cfg = apply_overrides(preset_obj.teacher, parsed, "teacher")
        dev = dist.device_for(resolve_device(device))
        seed_list = parse_seeds(seeds) if seeds else list(range(preset_obj.seeds))
        runs = expand_runs(preset_obj, pair_list, list(distillers), seed_list, data=data, teacher_cfg=teacher_cfg,
                           overrides=parsed, compile_=compile_flag(parsed), device=dev)
        teachers = list(dict.fromkeys(p.scaled(preset_obj)[0] for p in pair_list))
        ref = str(Path(preset).resolve()) if _is_file(preset) else preset
        return cls(preset=preset_obj, data=data, teacher_cfg=teacher_cfg, device=dev, device_name=device,
                   out=Path(out), runs=runs, teachers=teachers, seeds=seed_list, preset_ref=ref,
                   plugins=list(plugins), fresh=fresh)

    @classmethod
    def from_args(cls, args, distillers: Sequence[str], dist: DistInfo = SINGLE) -> "Plan":
        """The plan of a `kdbench run/teach` command line."""
        return cls.build(preset=args.preset, pairs=args.pairs, distillers=distillers, seeds=getattr(args, "seeds", None),
                         overrides=args.overrides, data_root=args.data_root, device=args.device, out=args.out,
                         plugins=args.plugin, fresh=getattr(args, "fresh", False), dist=dist)

    def run_dir(self, run: RunConfig) -> Path:
        return run_dir(self.out, run.preset, run.teacher, run.student, run.distiller, run.seed)

    def subset(self, runs: List[RunConfig], teachers: Optional[List[str]] = None) -> "Plan":
        """The same context with other cells (a Ray task's one cell, a teacher task's no cell)."""
        return dataclasses.replace(self, runs=list(runs), teachers=list(teachers if teachers is not None
                                                                        else dict.fromkeys(r.teacher for r in runs)))

    # -- transport -------------------------------------------------------------------------
    def to_json(self) -> str:
        """Everything a worker process needs, with every cell as its full RunConfig (paths included)."""
        return json.dumps({
            "schema": PLAN_SCHEMA, "preset": self.preset_ref or self.preset.name,
            "data": dataclasses.asdict(self.data), "teacher_config": dataclasses.asdict(self.teacher_cfg),
            "device": self.device_name, "out": str(self.out.resolve()), "plugins": self.plugins, "fresh": self.fresh,
            "seeds": self.seeds, "teachers": self.teachers, "runs": [r.to_dict(full=True) for r in self.runs]})

    @classmethod
    def from_json(cls, text: str, dist: DistInfo = SINGLE) -> "Plan":
        d = json.loads(text)
        if d.get("schema") != PLAN_SCHEMA:
            raise ValueError(f"plan schema {d.get('schema')!r}, expected {PLAN_SCHEMA}: driver and worker run "
                             "different kdbench versions")
        for module in d["plugins"]:
            load_plugin(module)
        preset = load_preset(d["preset"])
        return cls(preset=preset, data=build(DataConfig, d["data"], "plan data"),
                   teacher_cfg=build(TeacherConfig, d["teacher_config"], "plan teacher"),
                   device=dist.device_for(resolve_device(d["device"])), device_name=d["device"], out=Path(d["out"]),
                   runs=[RunConfig.from_dict(r) for r in d["runs"]], teachers=d["teachers"], seeds=d["seeds"],
                   preset_ref=d["preset"], plugins=d["plugins"], fresh=d["fresh"])


def _check_out(out: str):
    """`--out` must be a folder or a path kdbench can create one at: no part of it an existing file."""
    path = Path(out)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise UsageError(f"--out {out}: '{part}' is a file, not a folder; give a folder (it is created "
                                 "if missing)")
            return


def _is_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))
