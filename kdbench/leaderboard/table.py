"""The leaderboard's table model: run records -> `Table` with every statistic (docs/design.md §1).

`collect` reads `<out>/<preset>/<teacher>__<student>/<distiller>/seed<k>/` through `kdbench.results`
and computes every statistic; `kdbench.render` (text formats) and `kdbench.plots` (figures) only
format a Table. `kdbench.leaderboard.command` is the `kdbench leaderboard` command.
"""

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional

from ..assets import published_data, read_yaml
from ..config import load_preset, preset_names
from ..errors import UsageError, unknown_choice
from ..grid import pair_sets, resolve_pairs
from ..registry import DISTILLERS
from ..results import CHECKPOINT, RESULT_FILE, RecordError, RunRecord, has_record_file, read_record
from . import stats
from .across import Gain, gains_over

FIRST = ("vanilla", "kd")                       # column order: these, then the rest alphabetically
BASELINE = "vanilla"
ALPHA = 0.05
PUBLISHED_SECTION = {"paper": "cifar100", "imagenet": "imagenet", "coco": "coco_detection"}  # reproduce a paper table
# ... and the miniatures of one: their numbers are not comparable, their order of methods is (findings)
ORDER_SECTION = {**PUBLISHED_SECTION, "tiny": "cifar100", "det-tiny": "coco_detection"}
GROUPS = {"cnn-students": "CNN students", "vit-mlp-students": "ViT-MLP students",
          "imagenet-cnn-students": "CNN students", "imagenet-vit-students": "ViT students",
          "imagenet-mlp-students": "MLP students", "det-cnn-students": "CNN students", "custom": "Other pairs"}
ALL_PAIRS = "all pairs"
METRIC_LABELS = {"top1": "top-1", "map": "mAP"}   # how a table names its metric
COSTS = ("wall_s", "train_img_per_s", "peak_mem_mb")          # per run; the cell reports their means


@dataclass
class Cell:
    """One (pair, distiller): per-seed top-1 of done runs, their summary and the test against the reference."""

    distiller: str
    values: Dict[int, float] = field(default_factory=dict)       # seed -> final-epoch top-1
    best: Dict[int, float] = field(default_factory=dict)         # seed -> best-epoch top-1 (flagged)
    hashes: set = field(default_factory=set)
    dirs: Dict[int, Path] = field(default_factory=dict)                # seed -> run directory (curves)
    costs: Dict[str, Dict[int, float]] = field(default_factory=dict)   # COSTS name -> seed -> value
    params: Dict[str, Optional[float]] = field(default_factory=dict)    # student_params, extra_params, FLOPs
    failed: int = 0
    unfinished: int = 0
    summary: Optional[stats.Summary] = None
    comparison: Optional[stats.Comparison] = None
    published: Optional[float] = None
    published_src: Optional[str] = None
    best_in_row: bool = False
    shared_from: Optional[str] = None   # From scratch: the pair whose runs this pair shares (same student)

    @property
    def mean(self):
        return self.summary.mean if self.summary else None

    def cost_mean(self, name: str) -> Optional[float]:
        values = self.costs.get(name, {})
        return sum(values.values()) / len(values) if values else None

    @property
    def gap(self):
        return None if self.published is None or self.mean is None else self.mean - self.published


@dataclass
class Row:
    teacher: str                 # preset-scale names, as in the run directories
    student: str
    paper_teacher: str
    paper_student: str
    group: str
    cells: Dict[str, Cell] = field(default_factory=dict)
    teacher_top1: Optional[float] = None
    paper_values: Dict[str, tuple] = field(default_factory=dict)   # distiller -> (the paper's number, V/R) (ORDER_SECTION)

    @property
    def label(self):
        return f"{self.teacher} → {self.student}"

    @property
    def display(self):
        """The pair as people read it: the paper's model names."""
        return f"{model_display(self.paper_teacher)} → {model_display(self.paper_student)}"


@dataclass
class GroupStats:
    """Across-pairs statistics of one group of rows (all pairs, or one student group)."""

    group: str
    pairs: int
    over_baseline: Dict[str, Gain]            # each distiller's gain over vanilla
    over_reference: Dict[str, Gain]           # each distiller's gain over the reference
    friedman: stats.Friedman


@dataclass
class Table:
    out: str
    preset: str
    dataset: Optional[str]
    reference: Optional[str]
    distillers: List[str]
    rows: List[Row]
    problems: List[dict]                      # failed / unfinished / unreadable runs: never averaged
    friedman: Optional[stats.Friedman] = None                # all pairs (blocks[0].friedman)
    blocks: List[GroupStats] = field(default_factory=list)   # all pairs, then each student group

    @property
    def gains(self) -> Dict[str, dict]:
        """{distiller: {"gain": mean gain over vanilla, "pairs": n}} over all pairs (vanilla: 0); {}
        without vanilla runs. The same numbers as blocks[0].over_baseline, in the table's short form."""
        over = self.blocks[0].over_baseline if self.blocks else {}
        if not over:
            return {}
        base = sum(1 for r in self.rows if r.cells.get(BASELINE) and r.cells[BASELINE].mean is not None)
        return {d: {"gain": 0.0, "pairs": base} if d == BASELINE else {"gain": over[d].mean, "pairs": over[d].pairs}
                for d in self.distillers}
    published_protocol: Optional[str] = None
    order_source: Optional[str] = None        # the published.yaml section its order of methods is compared with
    notes: List[str] = field(default_factory=list)
    metric: str = "top1"                      # the records' headline: top1, or map (detection)

    def label(self, capital: bool = False) -> str:
        """The metric as tables print it: top-1 / Top-1, or mAP."""
        text = METRIC_LABELS.get(self.metric, self.metric)
        return text[:1].upper() + text[1:] if capital and not text[1:2].isupper() else text


# -- collect ---------------------------------------------------------------------------------------
def collect(out_dir, preset: Optional[str] = None, reference: Optional[str] = None, *,
            pairs: Optional[str] = None, distillers: Optional[str] = None, finished_only: bool = False) -> Table:
    """Load the records of one preset under `out_dir` and compute all statistics.

    `preset` may be omitted when `out_dir` holds one preset; `reference` defaults to `kd` when
    it was run (otherwise no significance tests). `pairs` (a `--pairs` spec) and `distillers`
    (comma-separated names) restrict the table, e.g. to the pairs every distiller has run.
    `finished_only` leaves out runs without a record (in progress or interrupted) instead of
    listing them: a published table depends only on the records it commits."""
    root = Path(out_dir)
    if not root.is_dir():
        raise UsageError(f"results directory '{root}' does not exist; pass the --out of `kdbench run`")
    seed_dirs = [d for d in sorted(root.glob("*/*__*/*/seed*"))
                 if d.is_dir() and d.name[4:].isdigit() and d.parts[-4] != "teachers"]
    found = sorted({d.parts[-4] for d in seed_dirs})
    if not found:
        hint = " (it looks like a preset directory: pass its parent)" if any(root.glob("*__*/*/seed*")) else ""
        raise UsageError(f"no run records under '{root}'{hint}; expected "
                         f"<out>/<preset>/<teacher>__<student>/<distiller>/seed<k>/{RESULT_FILE}")
    if preset is None:
        if len(found) > 1:
            raise UsageError(f"'{root}' holds results of several presets; choose one with --preset: "
                             f"{', '.join(found)}")
        preset = found[0]
    elif preset not in found:
        raise unknown_choice(f"preset with results under '{root}'", preset, found)

    order, by_scaled = _pair_order(preset)
    keep_pair, keep_distiller = _filters(root / preset, preset, seed_dirs, pairs, distillers)
    rows: Dict[tuple, Row] = {}
    problems, datasets, metrics, allocators = [], set(), set(), Counter()
    for d in (d for d in seed_dirs if d.parts[-4] == preset):
        if finished_only and not has_record_file(d):
            continue
        teacher, _, student = d.parts[-3].partition("__")
        if not (keep_pair(teacher, student) and keep_distiller(d.parts[-2])):
            continue
        if (teacher, student) not in rows:
            pair = order.get((teacher, student))
            rows[(teacher, student)] = Row(teacher, student, by_scaled.get(teacher, teacher),
                                           by_scaled.get(student, student),
                                           GROUPS.get(pair[1].set if pair else "custom", GROUPS["custom"]))
        row = rows[(teacher, student)]
        problem = _add_run(row, row.cells.setdefault(d.parts[-2], Cell(d.parts[-2])), d, datasets, metrics, allocators)
        if problem:
            problems.append({"status": problem[0], "dir": str(d.relative_to(root)), "error": problem[1]})
    rows_sorted = sorted(rows.values(), key=lambda r: (order.get((r.teacher, r.student), (len(order),))[0],
                                                       r.teacher, r.student))
    shared = _share_from_scratch(rows_sorted)
    names = sorted({d for r in rows_sorted for d in r.cells},
                   key=lambda d: (FIRST.index(d) if d in FIRST else len(FIRST), d))
    if reference is None:
        reference = "kd" if "kd" in names else None
    elif reference not in names:
        raise unknown_choice(f"reference distiller (runs under '{root / preset}')", reference, names)
    problems.sort(key=lambda p: (p["status"], p["dir"]))
    if len(metrics) > 1:
        raise UsageError(f"runs under '{root / preset}' report different metrics ({', '.join(sorted(metrics))}): "
                         "one leaderboard ranks one metric")
    table = Table(str(root), preset, ", ".join(sorted(str(x) for x in datasets)) or None, reference, names,
                  rows_sorted, problems, metric=next(iter(metrics), "top1"))
    if shared:
        table.notes.append(f"From scratch depends only on the student and ran once per student: {shared} pair(s) "
                           "take the From-scratch runs of the pair with the same student (counted once).")
    _compute(table)
    _attach_published(table)
    if len(allocators) > 1:
        table.notes.append("Wall times and memory mix memory allocators: " + ", ".join(
            f"{n} run{'s' if n != 1 else ''} under {name}" for name, n in sorted(allocators.items())) + " (`versions.malloc` of each record, "
            "system when a record does not name it; tcmalloc's CPU steps are faster, kdbench/launch.py).")
    return table


def _filters(where: Path, preset: str, seed_dirs, pairs: Optional[str], distillers: Optional[str]):
    """Predicates for the --pairs and --distillers restrictions (everything when not given)."""
    keep_pair = keep_distiller = lambda *_: True
    if pairs:
        if preset not in preset_names():
            raise UsageError(f"--pairs needs a built-in preset's pair names; '{preset}' is not one")
        p = load_preset(preset)
        wanted = {pair.scaled(p) for pair in resolve_pairs(pairs, p)}
        keep_pair = lambda t, s: (t, s) in wanted   # noqa: E731
    if distillers:
        have = sorted({d.parts[-2] for d in seed_dirs if d.parts[-4] == preset})
        wanted_d = [x.strip() for x in distillers.split(",") if x.strip()]
        for name in wanted_d:
            if name not in have:
                raise unknown_choice(f"distiller with runs under '{where}'", name, have)
        keep_distiller = lambda name: name in wanted_d   # noqa: E731
    return keep_pair, keep_distiller



def _add_run(row: Row, cell: Cell, d: Path, datasets: set, metrics: set, allocators: Counter):
    """Add one seed directory to its cell; returns (status, error) for a run that is not averaged."""
    try:
        rec = read_record(d)
    except RecordError as exc:                  # another schema, or not a kdbench record
        cell.failed += 1
        return "unreadable", str(exc)
    if rec is None:
        if has_record_file(d):
            cell.failed += 1
            return "unreadable", f"{RESULT_FILE} is not valid JSON"
        cell.unfinished += 1
        return "unfinished", f"{CHECKPOINT}, no {RESULT_FILE}" if (d / CHECKPOINT).exists() else f"no {RESULT_FILE}"
    value = rec.headline
    if rec.status != "done" or value is None or not math.isfinite(value):
        cell.failed += 1
        return "failed", rec.error or f"status {rec.status!r} without a finite {rec.metric}"
    seed = int(d.name[4:])
    cell.values[seed] = float(value)
    cell.dirs[seed] = d
    best = rec.best_top1 if rec.metric == "top1" else (rec.metrics or {}).get(f"best_{rec.metric}")
    if best is not None:
        cell.best[seed] = float(best)
    for name in COSTS:
        if getattr(rec, name, None) is not None:
            cell.costs.setdefault(name, {})[seed] = float(getattr(rec, name))
    for name in ("student_params", "extra_params", "train_flops_per_img"):
        if getattr(rec, name, None) is not None:
            cell.params[name] = getattr(rec, name)
    cell.hashes.add(_config_without_seed(rec))
    datasets.add(rec.dataset)
    metrics.add(rec.metric)
    allocators[(rec.versions or {}).get("malloc", "system")] += 1
    if rec.teacher_top1 is not None:
        row.teacher_top1 = float(rec.teacher_top1)
    return None


def _config_without_seed(rec: RunRecord) -> str:
    """Identity of a run's configuration apart from its seed (seeds of one cell differ by design)."""
    if rec.config is None:
        return str(rec.config_hash)
    return json.dumps({k: v for k, v in rec.config.items() if k != "seed"}, sort_keys=True, default=str)


def _pair_order(preset: str):
    """(scaled teacher, student) -> (index, Pair) in the preset's pair-set order, and scaled -> paper name."""
    if preset not in preset_names():
        return {}, {}
    p = load_preset(preset)
    sets = pair_sets()
    candidates = sets.get(p.pairs, []) + sets["imagenet" if p.pairs == "all" else "all"]
    order = {}
    for pair in candidates:
        if pair.teacher in p.models and pair.student in p.models:
            order.setdefault(pair.scaled(p), (len(order), pair))
    return order, {v: k for k, v in p.models.items()}


def _compute(table: Table):
    comparisons = []
    for row in table.rows:
        for cell in row.cells.values():
            cell.summary = stats.summarize([cell.values[s] for s in sorted(cell.values)])
            if len(cell.hashes) > 1:
                table.notes.append(f"{row.label} {cell.distiller}: runs with {len(cell.hashes)} different "
                                   "configurations (other than the seed) are averaged together")
        ref = row.cells.get(table.reference)
        for name, cell in row.cells.items():
            if ref is not None and name != table.reference and cell.values and ref.values:
                cell.comparison = stats.paired_compare(cell.values, ref.values)
                comparisons.append(cell.comparison)
        means = [stats.rounded(c.mean) for c in row.cells.values() if c.mean is not None]
        for cell in row.cells.values():          # at the printed precision: a tie is bold twice
            cell.best_in_row = cell.mean is not None and stats.rounded(cell.mean) == max(means)
    stats.holm_comparisons(comparisons)
    means = [{d: c.mean for d, c in r.cells.items() if c.mean is not None} for r in table.rows]
    groups = list(dict.fromkeys(r.group for r in table.rows))
    for group in [ALL_PAIRS] + (groups if len(groups) > 1 else []):
        subset = [m for m, r in zip(means, table.rows) if group in (ALL_PAIRS, r.group)]
        clusters = [(r.teacher, r.student) for r in table.rows if group in (ALL_PAIRS, r.group)]
        table.blocks.append(GroupStats(
            group, len(subset),
            gains_over(subset, table.distillers, BASELINE, clusters) if BASELINE in table.distillers else {},
            gains_over(subset, table.distillers, table.reference, clusters) if table.reference else {},
            stats.friedman(subset, table.distillers, ALPHA, control=table.reference)))
    table.friedman = table.blocks[0].friedman if table.blocks else stats.friedman([], table.distillers, ALPHA)


@lru_cache(maxsize=None)
def _model_names() -> dict:
    return read_yaml("names.yaml")["models"]


def model_display(name: str) -> str:
    """The paper's name of a model (benchmarks/names.yaml), else its code name."""
    return _model_names().get(name, name)


def method_display(name: str) -> str:
    """A distiller's `display_name`, else its registry name (also for distillers not loaded)."""
    return (getattr(DISTILLERS.get(name), "display_name", "") or name) if name in DISTILLERS else name


def _share_from_scratch(rows: List[Row]) -> int:
    """From scratch depends only on the student: a pair without From-scratch runs of its own takes those
    of the first pair (in order) with the same student, as a copy of the cell (its per-pair tests are its
    own) marked `shared_from`. Returns how many pairs took them."""
    donors = {}
    for row in rows:
        cell = row.cells.get(BASELINE)
        if cell is not None and cell.values and cell.shared_from is None:
            donors.setdefault(row.student, (row, cell))
    taken = 0
    for row in rows:
        if BASELINE not in row.cells and row.student in donors:
            donor_row, cell = donors[row.student]
            row.cells[BASELINE] = dataclasses.replace(cell, shared_from=donor_row.label, comparison=None)
            taken += 1
    return taken


def _attach_published(table: Table):
    """The paper's numbers: on every row of a preset in ORDER_SECTION (`Row.paper_values`), and on the
    cells (with the gap) only where the preset reproduces that table (PUBLISHED_SECTION)."""
    section = ORDER_SECTION.get(table.preset)
    if section is None:
        return
    data = published_data()[section]
    at_scale = table.preset in PUBLISHED_SECTION
    table.order_source = section
    table.published_protocol = data.get("protocol") if at_scale else None
    for row in table.rows:
        entry = next((p for p in data["pairs"] if (p["teacher"], p["student"]) ==
                      (row.paper_teacher, row.paper_student)), {})
        for name, cell in row.cells.items():
            if name == BASELINE and row.paper_student in data.get("scratch", {}):
                value, src = data["scratch"][row.paper_student]["top1"], data["scratch"][row.paper_student]["src"]
            elif name in entry:
                value, src = entry[name]
            else:
                continue
            row.paper_values[name] = (value, src)
            if at_scale:
                cell.published, cell.published_src = value, src
