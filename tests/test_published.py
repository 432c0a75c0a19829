"""Committed leaderboards regenerate from their committed run records.

Every `benchmarks/results/<name>/runs/` holds the result.json and metrics.jsonl of the runs its
leaderboard was made from; `kdbench leaderboard --out benchmarks/results/<name>/runs --publish
benchmarks/results/<name>` must write the committed files again. Text files (md, csv, latex,
json, findings) must be identical byte for byte. Figures are identical byte for byte when this
matplotlib is the one that drew them (its version is in each PNG); another version may anti-alias
differently, so then the PNG must only have the same size, and the HTML page is compared with its
inline images left out.
"""

import json
import re
import struct
import zlib
from pathlib import Path

import matplotlib
import pytest

from kdbench.leaderboard import collect
from kdbench.publish import FIGURE_FILE, TEXT_FILES, publish

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = sorted(p.parent for p in (ROOT / "benchmarks" / "results").glob("*/runs") if p.is_dir())
IMAGE = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def png_info(data: bytes):
    """(width, height, {tEXt key: value}) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size, text = 8, None, {}
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode()] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            text[key.decode()] = zlib.decompress(rest[1:]).decode("latin-1")
        pos += 12 + length
    return size[0], size[1], text


def test_some_leaderboard_is_published_with_its_records():
    assert any(p.name == "tiny" for p in PUBLISHED), "benchmarks/results/tiny/runs/ is missing"


@pytest.mark.parametrize("where", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_published_leaderboard_regenerates_from_its_records(where, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)                        # the JSON names --out as the command gave it
    table = collect(str((where / "runs").relative_to(ROOT)), finished_only=True)
    written = publish(table, tmp_path, where.name)
    assert written
    same_matplotlib = True
    for key in ("cd", "pairs", "diffs", "cost"):
        name = FIGURE_FILE.format(name=where.name, figure=key)
        new, old = tmp_path / name, where / name
        if not new.exists():
            assert not old.exists(), f"{old} is committed but the records no longer draw it"
            continue
        w, h, text = png_info(old.read_bytes())
        if f"version{matplotlib.__version__}," in text.get("Software", ""):
            assert new.read_bytes() == old.read_bytes(), f"{name} differs from the committed figure"
        else:
            same_matplotlib = False
            assert png_info(new.read_bytes())[:2] == (w, h), name
    for fmt, pattern in TEXT_FILES.items():
        name = pattern.format(name=where.name)
        new, old = (tmp_path / name).read_text(), (where / name).read_text()
        if fmt == "html" and not same_matplotlib:
            new, old = IMAGE.sub("data:image/png;base64,", new), IMAGE.sub("data:image/png;base64,", old)
        assert new == old, f"{where / name} does not regenerate from {where / 'runs'}"


BLOCK = re.compile(r"<!-- begin generated: (\S+) -->\n(.*?)<!-- end generated -->", re.S)
READMES = sorted((ROOT / "benchmarks" / "results").glob("*/README.md"))


@pytest.mark.parametrize("readme", READMES, ids=[p.parent.name for p in READMES])
def test_readme_generated_blocks_match_their_files(readme):
    """A results README quotes generated files (findings) between markers, verbatim."""
    text = readme.read_text()
    for name, body in BLOCK.findall(text):
        assert body == (readme.parent / name).read_text(), f"{readme}: the block of {name} is stale"
    if (readme.parent / "runs").is_dir():
        assert BLOCK.search(text), f"{readme} publishes a leaderboard but quotes no generated findings"


BENCH_TABLES = sorted((ROOT / "benchmarks" / "results").glob("*/bench.json"))


@pytest.mark.parametrize("path", BENCH_TABLES, ids=[p.parent.name for p in BENCH_TABLES])
def test_committed_bench_tables_are_generated_from_their_json(path):
    from kdbench.bench import format_rows
    rows = json.loads(path.read_text())
    assert (path.parent / "bench.md").read_text() == "```\n" + format_rows(rows) + "\n```\n"
    assert all(r["train_flops_per_img"] > 0 and 0 < r["peak_fraction"] < 1 for r in rows)


GENERATED_TABLES = sorted((ROOT / "benchmarks" / "results" / "performance").glob("*.json"))


@pytest.mark.parametrize("path", GENERATED_TABLES, ids=[p.stem for p in GENERATED_TABLES])
def test_committed_overhead_and_savings_tables_are_generated_from_their_json(path):
    """Issue 18: the bench, harness-overhead, PAT-savings and CPU-settings tables are their JSON rows, rendered."""
    from benchmarks import cpu_settings, pat_flops, pat_savings
    from kdbench.bench_overhead import format_overhead
    rows = json.loads(path.read_text())
    from kdbench.bench import format_rows
    renderers = {"overhead-": format_overhead, "pat-savings-": pat_savings.table, "cpu-settings-": cpu_settings.table,
                 "pat-flops-": pat_flops.table,
                 "bench-": lambda r: "```\n" + format_rows(r) + "\n```"}
    render = next(f for prefix, f in renderers.items() if path.name.startswith(prefix))
    if path.name.startswith("bench-"):                 # issue 18: work and utilisation in every row
        assert all(r["train_flops_per_img"] > 0 and 0 < r["peak_fraction"] < 1 for r in rows)
    assert path.with_suffix(".md").read_text() == render(rows) + "\n"


def test_adopted_allocator_won_every_round():
    """performance/README.md adopts tcmalloc because on every row each of its rounds beat every round
    of glibc's allocator: the committed JSON must say so."""
    rows = json.loads((ROOT / "benchmarks" / "results" / "performance" / "cpu-settings-tcmalloc-tiny.json").read_text())
    default = {(r["pair"], r["distiller"]): r["runs_ms"] for r in rows if r["setting"] == "default"}
    tcmalloc = [r for r in rows if r["setting"] == "tcmalloc"]
    assert len(tcmalloc) == len(default) == 4 and all(len(r["runs_ms"]) == 3 for r in tcmalloc)
    assert all(max(r["runs_ms"]) < min(default[(r["pair"], r["distiller"])]) for r in tcmalloc)


def test_pat_over_kd_is_bounded_by_its_work():
    """performance/README.md, "PAT / KD at tiny scale": the FLOP counts match the bench rows', and on
    ConvNeXt-T -> DeiT-T PAT does > 2x KD's work at no lower utilisation, its fusion blocks more than the
    share that 2.0x would need cut."""
    perf = ROOT / "benchmarks" / "results" / "performance"
    rows = {r["pair"]: r for r in json.loads((perf / "pat-flops-tiny-cpu.json").read_text())}
    bench = {(r["pair"], r["distiller"]): r["train_flops_per_img"] for r in json.loads((perf / "bench-tiny-cpu.json").read_text())}
    for pair, r in rows.items():
        assert r["kd_gflop"] == pytest.approx(bench[(pair, "kd")] / 1e9, rel=1e-6)
        assert r["pat_gflop"] == pytest.approx(bench[(pair, "pat")] / 1e9, rel=1e-6)
    r = rows["kdbench_convnext_t_s:kdbench_deit_t_s"]
    assert r["flop_ratio"] > 2 and r["time_ratio"] > 2 and r["utilisation_pat"] >= r["utilisation_kd"]
    assert (r["pat_gflop"] - r["prompts_gflop"]) / r["pat_gflop"] > 1 - 2 / r["time_ratio"]


def test_det_tiny_readme_verdict_holds_on_its_records(monkeypatch):
    """benchmarks/results/det-tiny/README.md, "What it says about the paper's claim", statement by statement."""
    monkeypatch.chdir(ROOT)
    where = ROOT / "benchmarks" / "results" / "det-tiny"
    t = collect(str((where / "runs").relative_to(ROOT)), finished_only=True)
    assert len(t.rows) == 2 and all(r.cells[d].summary.n == 3 for r in t.rows for d in t.distillers)
    for row in t.rows:
        mean = {d: c.mean for d, c in row.cells.items()}
        assert min(mean["fitnet"], mean["pat"]) > max(mean["kd"], mean["ofa"])       # the direction holds
        fitnet = row.cells["fitnet"].comparison
        assert fitnet.diff > 0 and (fitnet.p_holm < 0.05) == (row.student == "kdbench_resnet18_s")   # Holm
        assert row.paper_values["pat"][0] == max(v for v, _ in row.paper_values.values())
        assert mean["pat"] < mean["fitnet"]                                           # PAT below FitNet
    from scipy.stats import wilcoxon
    assert wilcoxon([1.0, 2.0]).pvalue == pytest.approx(0.5)        # two pairs: no test over pairs can reach 0.05
    records = [json.loads(p.read_text()) for p in (where / "runs").rglob("result.json") if "teachers" not in p.parts]
    assert {(r["epochs"], r["num_train"], r["num_test"]) for r in records} == {(4, 1200, 300)}
    tcmalloc = [(r["student"], r["distiller"], r["seed"]) for r in records
                if (r.get("versions") or {}).get("malloc", "system") != "system"]
    assert tcmalloc == [("kdbench_resnet18_s", "pat", 0)]
