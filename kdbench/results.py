"""The run-record contract (docs/design.md §3): `RunRecord` and `TeacherManifest` are the one writer and
the one reader of a run directory's `result.json` and `metrics.jsonl` and of a teacher's
`manifest.json`. Every other module calls the functions here and uses attributes (`rec.top1`).

A file is read only when its `schema` is this kdbench's SCHEMA: another schema, or a file that is no
kdbench record, is a `RecordError` (a UsageError: one line naming the file, the schema found and the
one expected). A missing or half-written file reads as None (a run that did not finish, a teacher
not cached). Manifests written before manifests carried a schema have schema 1's keys less
`schema` and `source`: they read as schema 1. A manifest of another schema is an error, not a stale
cache, so that two kdbench versions sharing a directory never overwrite each other's teachers.
Atomic writes (temp file, fsync, rename) for everything kdbench stores.
"""

import dataclasses
import json
import os
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Union, get_args, get_origin, get_type_hints

import timm
import torch

from .errors import UsageError
from .process import versions

SCHEMA = 1
RESULT_FILE = "result.json"           # a run directory's record, written when the run ends
METRICS_FILE = "metrics.jsonl"        # beside it: training-curve rows and one evaluation row per epoch
CHECKPOINT = "checkpoint.pt"          # beside it while the run is unfinished (written by the engine)
MANIFEST_FILE = "manifest.json"       # a teacher directory's manifest
PROTOCOL = ("top1/top5: final-epoch test accuracy of the raw student (headline); best_top1: best "
            "epoch on the test set, as the papers report (optimistic, flagged); ema_top1: final EMA student")
UNWRITTEN = {"written": False}        # field metadata: set by the reader or in memory, never in the file
IF_SET = {"written": "if-set"}        # field metadata: written only when not at its default (a later addition:
                                      # records without it keep their bytes through a read and a write)


class RecordError(UsageError):
    """A result.json or manifest.json that this kdbench does not read: another schema, or not kdbench's."""


# -- atomic writes -------------------------------------------------------------------------------
def _file_mode() -> int:
    """The mode open() would give a new file (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes):
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: Path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the records -----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RunRecord:
    """One run's result.json. Field order is the file's key order; a failed run writes FAILED_KEYS."""

    schema: int = SCHEMA
    status: str                                   # "done" or "failed"
    error: Optional[str] = None                   # failed: "ExceptionClass: message"
    traceback: Optional[str] = None               # failed only
    distiller: str
    teacher: str
    student: str
    preset: str
    dataset: Optional[str] = None
    seed: int
    task: str = field(default="classification", metadata=IF_SET)      # classification | detection
    metric: str = field(default="top1", metadata=IF_SET)    # the headline: top1, or map (detection)
    metrics: Optional[dict] = field(default=None, metadata=IF_SET)    # detection: the final evaluation (percent)
    top1: Optional[float] = None                  # final epoch, percent (classification's headline)
    top5: Optional[float] = None
    best_top1: Optional[float] = None             # best epoch on the test set (optimistic, flagged)
    best_epoch: Optional[int] = None
    ema_top1: Optional[float] = None
    teacher_top1: Optional[float] = None
    epochs: Optional[int] = None
    wall_s: Optional[float] = None
    train_img_per_s: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    student_params: Optional[int] = None
    extra_params: Optional[int] = None
    train_flops_per_img: Optional[float] = field(default=None, metadata=IF_SET)   # forward + backward, counted once
    global_batch_size: Optional[int] = None
    world_size: Optional[int] = None
    per_rank_batch_size: Optional[int] = None
    lr: Optional[float] = None
    num_train: Optional[int] = None
    num_test: Optional[int] = None
    protocol: Optional[str] = None
    config: Optional[dict] = None                 # the resolved RunConfig
    config_hash: Optional[str] = None
    versions: Optional[dict] = None               # kdbench, source, torch, timm, python, device, world_size, malloc
    dir: Optional[Path] = field(default=None, compare=False, repr=False, metadata=UNWRITTEN)  # where it was read

    FAILED_KEYS = ("schema", "status", "error", "traceback", "distiller", "teacher", "student", "preset",
                   "dataset", "seed", "task", "config", "config_hash")     # task: only when not classification

    @property
    def headline(self) -> Optional[float]:
        """The value the leaderboard ranks: `top1`, or `metrics[metric]` for another task's metric."""
        return self.top1 if self.metric == "top1" else (self.metrics or {}).get(self.metric)

    @classmethod
    def done(cls, run, history: List[dict], *, dataset: str, num_train: int, num_test: int,
             teacher_top1: Optional[float], wall_s: float, img_per_s: float, peak_mem_mb: float,
             student_params: int, extra_params: int, world_size: int, device: torch.device,
             train_flops_per_img: Optional[float] = None) -> "RunRecord":
        """The record of a finished run (`run`: its RunConfig; `history`: its evaluation rows, one per
        epoch, each scored epoch with the task's `metric`)."""
        metric = run.metric
        scored = [h for h in history if metric in h]      # epochs that `recipe.eval_every` skipped have no score
        last, best = scored[-1], max(scored, key=lambda h: h[metric])
        r = run.recipe
        final = {k: v for k, v in last.items() if k not in ("kind", "epoch", "step", "lr", "img_per_s", "loss")}
        return cls(status="done", distiller=run.distiller, teacher=run.teacher, student=run.student,
                   preset=run.preset, dataset=dataset, seed=run.seed, task=run.task, metric=metric,
                   metrics=None if metric == "top1" else {**final, f"best_{metric}": best[metric]},
                   top1=last.get("top1"), top5=last.get("top5"),
                   best_top1=best.get("top1"), best_epoch=best["epoch"], ema_top1=last.get("ema_top1"),
                   teacher_top1=teacher_top1, epochs=r.epochs, wall_s=round(wall_s, 2),
                   train_img_per_s=round(img_per_s, 1), peak_mem_mb=round(peak_mem_mb, 1),
                   student_params=student_params, extra_params=extra_params,
                   train_flops_per_img=train_flops_per_img, global_batch_size=r.batch_size,
                   world_size=world_size, per_rank_batch_size=r.batch_size // world_size, lr=r.lr,
                   num_train=num_train, num_test=num_test, protocol=PROTOCOL, config=run.to_dict(),
                   config_hash=run.hash(), versions=versions(device, world_size))

    @classmethod
    def failed(cls, run, exc: BaseException) -> "RunRecord":
        """The record of a run that raised `exc` (with its traceback, innermost 8 frames)."""
        return cls(status="failed", error=f"{exc.__class__.__name__}: {exc}",
                   traceback="".join(traceback.format_exception(exc, limit=8)), distiller=run.distiller,
                   teacher=run.teacher, student=run.student, preset=run.preset, dataset=run.data.dataset,
                   seed=run.seed, task=run.task, config=run.to_dict(), config_hash=run.hash())

    def to_dict(self) -> dict:
        """The JSON object written to result.json (the one place its layout is defined)."""
        written = _written(self)
        keys = [k for k in self.FAILED_KEYS if k in written or k == "traceback"] if self.status == "failed" \
            else [k for k in written if k != "traceback"]
        return {k: getattr(self, k) for k in keys}


@dataclass(kw_only=True)
class TeacherManifest:
    """A cached teacher's manifest.json: trained by kdbench (`source` "train") or a released
    checkpoint evaluated once per file (`source` "checkpoint"); fields that do not apply are None."""

    schema: int = SCHEMA
    source: str                                   # "train" | "checkpoint"
    architecture: str
    dataset: Optional[str] = None
    num_classes: Optional[int] = None
    top1: Optional[float] = None                  # the headline (top-1, or `metric`) in the run's precision;
    top5: Optional[float] = None                  # None: not evaluated (dry run)
    metric: str = field(default="top1", metadata=IF_SET)      # detection: "map" (COCO mAP@[.5:.95], percent)
    precision: Optional[str] = None
    recipe_hash: Optional[str] = None             # the teacher RunConfig's hash: a change makes it stale
    recipe: Optional[dict] = None                 # train: the RunConfig that trained it
    file: Optional[str] = None                    # train: weights file in the teacher dir; checkpoint: its path
    sha256: Optional[str] = None
    weights: Optional[str] = None                 # checkpoint: which weights of the file (e.g. state_dict_ema)
    epochs: Optional[int] = None                  # train: the training run's
    wall_s: Optional[float] = None
    train_img_per_s: Optional[float] = None
    params: Optional[int] = None
    published_top1: Optional[float] = None        # checkpoint of a paper's model: the paper's top-1 and the gap
    published_src: Optional[str] = None
    published_gap: Optional[float] = None
    warning: Optional[str] = None
    timm_version: Optional[str] = None
    torch_version: Optional[str] = None
    note: Optional[str] = field(default=None, metadata=UNWRITTEN)   # a dry run's teacher: what it is instead

    @classmethod
    def trained(cls, run, record: RunRecord, *, num_classes: int, file: str, sha256: str) -> "TeacherManifest":
        """The manifest of a teacher trained by `run` (the `vanilla` method), whose record is `record`."""
        return cls(source="train", architecture=run.teacher, dataset=record.dataset, num_classes=num_classes,
                   top1=record.headline, top5=record.top5, metric=record.metric, precision=run.precision, recipe_hash=run.hash(),
                   recipe=run.to_dict(), file=file, sha256=sha256, epochs=record.epochs, wall_s=record.wall_s,
                   train_img_per_s=record.train_img_per_s, params=record.student_params,
                   timm_version=timm.__version__, torch_version=torch.__version__)

    @classmethod
    def released(cls, run, *, dataset: str, num_classes: int, top1: float, top5: Optional[float], file: str,
                 sha256: str, weights: str, metric: str = "top1", **published) -> "TeacherManifest":
        """The manifest of a released checkpoint evaluated under `run` (`top1`: the headline `metric`);
        `published`: teachers.published_check's."""
        return cls(source="checkpoint", architecture=run.teacher, dataset=dataset, num_classes=num_classes,
                   top1=top1, top5=top5, metric=metric, precision=run.precision, recipe_hash=run.hash(), file=file, sha256=sha256,
                   weights=weights, timm_version=timm.__version__, torch_version=torch.__version__, **published)

    def to_dict(self) -> dict:
        """The JSON object written to manifest.json (the one place its layout is defined)."""
        return {k: getattr(self, k) for k in _written(self)}


def _written(obj) -> List[str]:
    return [f.name for f in dataclasses.fields(obj) if f.metadata.get("written", True) is True
            or (f.metadata.get("written") == IF_SET["written"] and getattr(obj, f.name) != f.default)]


# -- write and read ------------------------------------------------------------------------------
def write_record(run_dir: Path, record: RunRecord):
    atomic_write_json(Path(run_dir) / RESULT_FILE, record.to_dict())


def read_record(run_dir: Path) -> Optional[RunRecord]:
    """The run's record; None when it has none or a half-written one; RecordError when it is not a
    kdbench record of this schema."""
    data = _load(Path(run_dir) / RESULT_FILE)
    if data is None:
        return None
    return dataclasses.replace(_from_dict(RunRecord, data, Path(run_dir) / RESULT_FILE, "run record"),
                               dir=Path(run_dir))


def has_record_file(run_dir: Path) -> bool:
    """A result.json exists (readable or not): with `read_record` None, a half-written one."""
    return (Path(run_dir) / RESULT_FILE).exists()


def iter_records(root: Path) -> Iterator[RunRecord]:
    """Every readable record under `root` in path order, with `dir` set."""
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        rec = read_record(path.parent)
        if rec is not None:
            yield rec


def write_metrics(run_dir: Path, history: List[dict]):
    atomic_write_bytes(Path(run_dir) / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in history).encode())


def read_metrics(run_dir: Path) -> List[dict]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_manifest(teacher_dir: Path, manifest: TeacherManifest):
    atomic_write_json(Path(teacher_dir) / MANIFEST_FILE, manifest.to_dict())


def read_manifest(teacher_dir: Path) -> Optional[TeacherManifest]:
    """The teacher's manifest; None when absent or half-written (the teacher is not cached);
    RecordError when it is not a kdbench manifest of this schema."""
    path = Path(teacher_dir) / MANIFEST_FILE
    data = _load(path)
    if isinstance(data, dict) and "schema" not in data and "architecture" in data:    # written before schemas
        data = {"schema": SCHEMA, "source": "checkpoint" if "weights" in data else "train", **data}
    return None if data is None else _from_dict(TeacherManifest, data, path, "teacher manifest")


def has_manifest_file(teacher_dir: Path) -> bool:
    return (Path(teacher_dir) / MANIFEST_FILE).exists()


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None                     # absent, or cut short by a crash: a partial write


def _from_dict(cls, data, path: Path, kind: str):
    """`cls` from a file's JSON object, checked: schema, required keys, value types. Keys this
    schema does not know are ignored."""
    def refuse(found: str):
        return RecordError(f"{path} is not a kdbench {kind} of schema {SCHEMA} (found {found}); move it "
                           f"aside or delete it")
    if not isinstance(data, dict):
        raise refuse(f"a JSON {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise refuse(f"schema {data['schema']!r}" if "schema" in data else "no schema")
    types = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.metadata.get("written", True)}
    values = {k: v for k, v in data.items() if k in known}
    for f in dataclasses.fields(cls):
        if f.name in values and not _is_a(values[f.name], types[f.name]):
            raise refuse(f"{f.name} {values[f.name]!r:.60}")
        if f.name not in values and f.name in known and f.default is dataclasses.MISSING:
            raise refuse(f"no {f.name}")
    if cls is RunRecord and values["status"] not in ("done", "failed"):
        raise refuse(f"status {values['status']!r}")
    return cls(**values)


def _is_a(value, hint) -> bool:
    if get_origin(hint) is Union:                          # Optional[X]
        return value is None or any(_is_a(value, h) for h in get_args(hint) if h is not type(None))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
