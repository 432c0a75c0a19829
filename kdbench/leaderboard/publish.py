"""A published leaderboard: every file of a results directory, regenerated from its run records.

`kdbench leaderboard --out RUNS --publish DIR` writes DIR/NAME.{md,csv,latex,json,html},
DIR/NAME-findings.md and the figures DIR/NAME-{cd,pairs,diffs,cost}.png (NAME: the preset), and
refreshes the blocks of DIR/README.md that quote a generated file
(`<!-- begin generated: NAME-findings.md -->` ... `<!-- end generated -->`). A
committed leaderboard commits RUNS too (every run's record and metrics file, no checkpoints), so that this
one command reproduces it; tests/test_published.py checks that it does.
"""

import json
import re
from pathlib import Path
from typing import Dict, List

from ..errors import UsageError, unknown_choice
from ..results import atomic_write_bytes, read_metrics
from .findings import render_findings
from .html import render_html
from .plots import plot_cd, plot_cost, plot_diffs, plot_pairs, png_bytes
from .render import TEXT_FORMATS, render_text
from .table import Table

FORMATS = TEXT_FORMATS + ("findings", "html")

TEXT_FILES = {"md": "{name}.md", "csv": "{name}.csv", "latex": "{name}.latex", "json": "{name}.json",
              "findings": "{name}-findings.md", "html": "{name}.html"}
FIGURES = {"cd": plot_cd, "pairs": plot_pairs, "diffs": plot_diffs, "cost": plot_cost}
FIGURE_FILE = "{name}-{figure}.png"
README_BLOCK = re.compile(r"(<!-- begin generated: (\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def figures(table: Table) -> Dict[str, bytes]:
    """Every figure the table can draw, as PNG bytes (one without the data it needs is left out)."""
    out = {}
    for key, draw in FIGURES.items():
        try:
            out[key] = png_bytes(draw, table)
        except UsageError:
            continue
    return out


def curves(table: Table) -> Dict[str, Dict[str, List[dict]]]:
    """{"<teacher>__<student>/<distiller>": {seed: metrics rows}} of every finished run in the table."""
    return {f"{row.teacher}__{row.student}/{name}": {str(seed): read_metrics(d) for seed, d in sorted(cell.dirs.items())}
            for row in table.rows for name, cell in row.cells.items() if cell.dirs}


def render(table: Table, fmt: str = "md") -> str:
    """The table as md, csv, latex, json, findings (generated claims, Markdown) or html (one
    self-contained page) text."""
    if fmt not in FORMATS:
        raise unknown_choice("format", fmt, FORMATS)
    if fmt == "findings":
        return render_findings(table)
    if fmt == "html":
        return render_html_report(table)
    return render_text(table, fmt)


def render_html_report(table: Table) -> str:
    """The self-contained HTML report: the JSON document, the figures inline and each cell's curves."""
    return render_html(json.loads(render_text(table, "json")), figures=figures(table), curves=curves(table))


def publish(table: Table, directory, name: str = "") -> List[Path]:
    """Write every text format and figure of `table` into `directory` (atomically, each file); returns
    the paths written."""
    directory, name = Path(directory), name or table.preset
    written = []
    for fmt, pattern in TEXT_FILES.items():
        path = directory / pattern.format(name=name)
        text = render(table, fmt)
        atomic_write_bytes(path, (text if text.endswith("\n") else text + "\n").encode())
        written.append(path)
    for key, png in figures(table).items():
        path = directory / FIGURE_FILE.format(name=name, figure=key)
        atomic_write_bytes(path, png)
        written.append(path)
    readme = directory / "README.md"
    if readme.is_file():
        text = readme.read_text()
        quoted = README_BLOCK.sub(lambda m: m[1] + _quoted(directory / m[2]) + m[4], text)
        if quoted != text:
            atomic_write_bytes(readme, quoted.encode())
            written.append(readme)
    return written


def _quoted(path: Path) -> str:
    """A generated file's text for a README block (the block's own markers stay as they were)."""
    if not path.is_file():
        raise UsageError(f"{path.parent / 'README.md'} quotes {path.name}, which --publish did not write")
    return path.read_text()
