"""Leaderboard on synthetic result.json trees: table model, four formats, plots, command line."""

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from kdbench.leaderboard import collect, render, stats
from kdbench.leaderboard.command import add_parser
from kdbench.leaderboard.plots import plot_cd, plot_paths
from kdbench.leaderboard.render import CSV_FIELDS
from kdbench.errors import UsageError
from kdbench.results import RunRecord, write_record

SWIN_R18 = ("kdbench_swin_t_s", "kdbench_resnet18_s")          # tiny preset: pair 1 (CNN students)
CONV_RESMLP = ("kdbench_convnext_t_s", "kdbench_resmlp_s12_s")  # pair 11 (ViT-MLP students)
MIXER_DEIT = ("kdbench_mixer_b_s", "kdbench_deit_t_s")          # pair 8 (ViT-MLP students)
CUSTOM = ("kdbench_resnet50_s", "kdbench_resnet18_s")           # in no pair set
# top-1 per seed 0, 1, 2 (None = no run)
TOP1 = {
    SWIN_R18: {"vanilla": [70.0, 71.0, 72.0], "kd": [73.0, 74.5, 75.0], "fitnet": [69.0, 70.0, None],
               "dkd": [74.0, 74.0, 76.0]},
    MIXER_DEIT: {"vanilla": [50.0, 52.0, 51.0], "kd": [55.0, 55.5, 57.0], "fitnet": [40.0, 41.0, 42.0],
                 "dkd": [56.0, 58.0, 57.5]},
    CONV_RESMLP: {"vanilla": [60.0, 61.0, 62.0], "kd": [63.0, 64.0, 66.0], "fitnet": [61.0, 62.0, 63.0],
                  "dkd": [62.0, 65.0, 64.0]},
    CUSTOM: {"vanilla": [80.0, None, None], "kd": [81.0, None, None], "dkd": [81.5, None, None]},
}


def record(preset, pair, distiller, seed, top1, **kw):
    fields = dict(status="done", distiller=distiller, teacher=pair[0], student=pair[1], preset=preset,
                  dataset="fashion-mnist", seed=seed, top1=top1, top5=99.0,
                  best_top1=None if top1 is None else top1 + 0.5, teacher_top1=88.0,
                  epochs=2, wall_s=1.0, extra_params=0, config_hash=f"h-{distiller}")
    return RunRecord(**{**fields, **kw})


def write(root, preset, pair, distiller, seed, rec=None):
    d = root / preset / f"{pair[0]}__{pair[1]}" / distiller / f"seed{seed}"
    if rec is None:                      # unfinished: a checkpoint, no result.json
        d.mkdir(parents=True)
        (d / "checkpoint.pt").write_bytes(b"\0")
    else:
        write_record(d, rec)
    return d


@pytest.fixture
def runs(tmp_path):
    for pair, cols in TOP1.items():
        for distiller, values in cols.items():
            for seed, v in enumerate(values):
                if v is not None:
                    write(tmp_path, "tiny", pair, distiller, seed, record("tiny", pair, distiller, seed, v))
    failed = RunRecord(status="failed", error="RuntimeError: boom", distiller="fitnet", teacher=SWIN_R18[0],
                       student=SWIN_R18[1], preset="tiny", dataset="fashion-mnist", seed=2, config_hash="h-fitnet")
    write(tmp_path, "tiny", SWIN_R18, "fitnet", 2, failed)
    write(tmp_path, "tiny", MIXER_DEIT, "dkd", 3)            # unfinished seed 3
    (tmp_path / "teachers" / "tiny" / "kdbench_swin_t_s" / "train-x").mkdir(parents=True)   # ignored
    return tmp_path


def cell(table, pair, distiller):
    row = next(r for r in table.rows if (r.teacher, r.student) == pair)
    return row.cells.get(distiller)


def test_collect_rows_columns_and_groups(runs):
    t = collect(runs)
    assert t.preset == "tiny" and t.reference == "kd" and t.dataset == "fashion-mnist"
    assert t.distillers == ["vanilla", "kd", "dkd", "fitnet"]
    assert [(r.teacher, r.student) for r in t.rows] == [SWIN_R18, MIXER_DEIT, CONV_RESMLP, CUSTOM]
    assert [r.group for r in t.rows] == ["CNN students", "ViT-MLP students", "ViT-MLP students", "Other pairs"]
    assert t.rows[0].paper_teacher == "swin_tiny_patch4_window7_224" and t.rows[0].paper_student == "resnet18"
    assert cell(t, CUSTOM, "fitnet") is None                 # missing cell


def test_cells_summaries_and_paired_tests(runs):
    t = collect(runs)
    kd = cell(t, SWIN_R18, "kd")
    assert kd.summary.n == 3 and kd.summary.mean == pytest.approx(np.mean([73.0, 74.5, 75.0]))
    assert kd.summary.std == pytest.approx(np.std([73.0, 74.5, 75.0], ddof=1))
    assert kd.comparison is None                              # the reference itself
    dkd = cell(t, MIXER_DEIT, "dkd")
    d = np.array([56.0, 58.0, 57.5]) - np.array([55.0, 55.5, 57.0])
    assert dkd.comparison.diff == pytest.approx(d.mean())
    assert dkd.comparison.p_t == pytest.approx(st.ttest_1samp(d, 0).pvalue)
    # Holm over every comparison in the table: 3 pairs x 3 distillers with a t-test (custom pair: n=1)
    comps = [c.comparison for r in t.rows for c in r.cells.values() if c.comparison]
    tested = [c for c in comps if c.p_t is not None]
    assert len(tested) == 9
    assert [c.p_holm for c in comps] == pytest.approx(stats.holm([c.p_t for c in comps]))
    assert max(c.p_holm for c in tested) <= 1.0
    n1 = cell(t, CUSTOM, "dkd")
    assert n1.summary.std is None and n1.comparison.p_t is None and "n=1" in n1.comparison.note


def test_failed_and_unfinished_runs_are_listed_not_averaged(runs):
    t = collect(runs)
    fit = cell(t, SWIN_R18, "fitnet")
    assert (fit.summary.n, fit.failed) == (2, 1) and fit.summary.mean == pytest.approx(69.5)
    dkd = cell(t, MIXER_DEIT, "dkd")
    assert (dkd.summary.n, dkd.unfinished) == (3, 1)
    assert [(p["status"], p["dir"]) for p in t.problems] == [
        ("failed", "tiny/kdbench_swin_t_s__kdbench_resnet18_s/fitnet/seed2"),
        ("unfinished", "tiny/kdbench_mixer_b_s__kdbench_deit_t_s/dkd/seed3")]
    assert t.problems[0]["error"] == "RuntimeError: boom"


def test_half_written_and_foreign_records_are_listed_not_averaged(runs):
    pair_dir = runs / "tiny" / f"{CONV_RESMLP[0]}__{CONV_RESMLP[1]}"
    (pair_dir / "kd" / "seed0" / "result.json").write_text('{"schema": 1, "status": "do')      # cut short
    (pair_dir / "dkd" / "seed0" / "result.json").write_text(json.dumps({"schema": 0, "top1": 99.0}))
    t = collect(runs)
    errors = {p["dir"].split("/", 2)[2]: p["error"] for p in t.problems if p["status"] == "unreadable"}
    assert errors["kd/seed0"] == "result.json is not valid JSON"
    assert "dkd/seed0/result.json is not a kdbench run record of schema 1 (found schema 0)" in errors["dkd/seed0"]
    for d in ("kd", "dkd"):
        assert cell(t, CONV_RESMLP, d).failed == 1 and 0 not in cell(t, CONV_RESMLP, d).values


def test_across_pairs_gain_and_ranks(runs):
    t = collect(runs)
    means = {(r.teacher, r.student): {d: c.mean for d, c in r.cells.items()} for r in t.rows}
    kd_gain = np.mean([means[p]["kd"] - means[p]["vanilla"] for p in TOP1])
    assert t.gains["kd"] == {"gain": pytest.approx(kd_gain), "pairs": 4}
    # Friedman over the 3 pairs with all 4 distillers (CUSTOM has no fitnet), rank 1 = best
    rows = [[means[p][d] for d in t.distillers] for p in (SWIN_R18, MIXER_DEIT, CONV_RESMLP)]
    ranks = np.mean([st.rankdata([-v for v in r]) for r in rows], axis=0)
    assert t.friedman.n == 3 and t.friedman.avg_ranks == pytest.approx(ranks)
    # 3 pairs (< 5): the p by permutation, no asymptotic critical difference (issue 29)
    assert t.friedman.cd is None and t.friedman.iman_davenport_f is None and "permutation (exact)" in t.friedman.note
    assert t.friedman.p == pytest.approx(stats.friedman_permutation_p(rows)[0])
    assert stats.critical_difference(4, 3) == pytest.approx(2.569 * np.sqrt(4 * 5 / 18), abs=1e-3)   # were it asymptotic


def test_markdown(runs):
    md = render(collect(runs), "md")
    lines = md.splitlines()
    header = next(x for x in lines if x.startswith("| teacher → student"))
    assert header.split("|")[3:7] == [" From scratch ", " KD ", " DKD ", " FitNet "]   # paper names
    row = next(x for x in lines if x.startswith("| Swin-T → ResNet18 |"))
    assert "**74.67 ± 1.15** (3)" in row                      # dkd best in the row
    assert "71.00 ± 1.00 (3)†↓" in row                        # vanilla significantly below kd
    assert "69.50 ± 0.71 (2, 1 failed)" in row
    assert "| **CNN students** |" in md and "| **ViT-MLP students** |" in md
    assert "*avg. gain over vanilla [95% CI] (pairs)*" in md and "*avg. rank (3 pairs)*" in md
    assert "*CNN students: avg. rank (1 pair)*" in md and "*ViT-MLP students: avg. rank (2 pairs)*" in md
    assert "*W/T/L vs kd, Wilcoxon-Holm p*" in md and "*median gain over vanilla*" in md
    assert "Friedman test over 3 pairs" in md and "critical difference" in md
    assert "failed: tiny/kdbench_swin_t_s__kdbench_resnet18_s/fitnet/seed2: RuntimeError: boom" in md
    assert "unfinished: tiny/kdbench_mixer_b_s__kdbench_deit_t_s/dkd/seed3" in md
    assert "pub." not in md                                   # published numbers only for paper presets


def test_significance_mark(tmp_path):
    # 8 seeds, ofa far above kd, fitnet far below: both survive Holm
    pair = SWIN_R18
    for seed in range(8):
        for d, v in (("kd", 70 + 0.1 * seed), ("ofa", 75 + 0.3 * (seed % 3)), ("fitnet", 60 - 0.2 * (seed % 2))):
            write(tmp_path, "tiny", pair, d, seed, record("tiny", pair, d, seed, v))
    t = collect(tmp_path)
    assert cell(t, pair, "ofa").comparison.p_wilcoxon is not None
    md = render(t, "md")
    assert "(8)†↑" in md and "(8)†↓" in md
    assert r"$^{\dagger\uparrow}$" in render(t, "latex")


def test_latex_booktabs(runs):
    tex = render(collect(runs), "latex")
    for macro in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{llcccc}", r"\textit{CNN students}"):
        assert macro in tex
    assert r"Swin-T $\rightarrow$ ResNet18" in tex
    assert r"\textbf{74.67 $\pm$ 1.15} (3)" in tex
    assert "kdbench_swin" not in tex.split(r"\end{table}")[0]    # every underscore escaped in the table
    assert "% failed: tiny/" in tex


def test_csv_long_format(runs):
    t = collect(runs)
    rows = list(csv.DictReader(io.StringIO(render(t, "csv"))))
    assert len(rows) == 15 and set(CSV_FIELDS) <= set(rows[0])
    r = next(x for x in rows if x["teacher"] == MIXER_DEIT[0] and x["distiller"] == "dkd")
    d = np.array([56.0, 58.0, 57.5]) - np.array([55.0, 55.5, 57.0])
    assert float(r["mean"]) == pytest.approx(np.mean([56.0, 58.0, 57.5]))
    assert float(r["diff_vs_ref"]) == pytest.approx(d.mean())
    assert float(r["p_t"]) == pytest.approx(st.ttest_1samp(d, 0).pvalue)
    assert r["n_unfinished"] == "1" and r["seeds"] == "0 1 2" and r["reference"] == "kd"
    lo, hi = float(r["ci_low"]), float(r["ci_high"])
    assert (lo + hi) / 2 == pytest.approx(float(r["mean"]))


def test_json(runs):
    t = collect(runs)
    doc = json.loads(render(t, "json"))
    assert [d["name"] for d in doc["distillers"]] == t.distillers
    assert doc["friedman"]["pairs"] == 3 and doc["friedman"]["p"] == pytest.approx(t.friedman.p)
    assert len(doc["cells"]) == 15 and len(doc["problems"]) == 2
    kd = next(d for d in doc["distillers"] if d["name"] == "kd")
    assert kd["avg_gain_over_vanilla"] == pytest.approx(t.gains["kd"]["gain"])


def test_published_reference_column_for_paper_preset(tmp_path):
    pair = ("swin_tiny_patch4_window7_224", "resnet18")
    for d, v in (("vanilla", 74.5), ("kd", 79.0)):
        write(tmp_path, "paper", pair, d, 0, record("paper", pair, d, 0, v))
    t = collect(tmp_path)
    kd = cell(t, pair, "kd")
    assert (kd.published, kd.published_src) == (78.74, "V") and kd.gap == pytest.approx(0.26)
    assert cell(t, pair, "vanilla").published == 74.01         # scratch accuracy of the student
    md = render(t, "md")
    assert "KD pub." in md and "78.74 V (+0.26)" in md
    r = next(x for x in csv.DictReader(io.StringIO(render(t, "csv"))) if x["distiller"] == "kd")
    assert float(r["published"]) == 78.74 and float(r["gap_to_published"]) == pytest.approx(0.26)


def test_no_kd_means_no_reference(tmp_path):
    write(tmp_path, "tiny", SWIN_R18, "vanilla", 0, record("tiny", SWIN_R18, "vanilla", 0, 70.0))
    t = collect(tmp_path)
    assert t.reference is None and "No reference distiller" in render(t, "md")


def test_usage_errors(runs, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        collect(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no run records"):
        collect(tmp_path / "empty")
    with pytest.raises(UsageError, match="pass its parent"):
        collect(runs / "tiny")
    with pytest.raises(UsageError, match="valid choices: dkd, fitnet, kd, vanilla"):
        collect(runs, reference="ofa")
    with pytest.raises(UsageError, match="valid choices: tiny"):
        collect(runs, preset="smoke")
    write(runs, "smoke", SWIN_R18, "kd", 0, record("smoke", SWIN_R18, "kd", 0, 50.0))
    with pytest.raises(UsageError, match="several presets.*smoke, tiny"):
        collect(runs)
    assert collect(runs, preset="smoke").preset == "smoke"
    with pytest.raises(UsageError, match="unknown format"):
        render(collect(runs, preset="tiny"), "xml")


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="kdbench")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_line_and_plots(runs, tmp_path, capsys):
    import matplotlib.image as mpimg
    plot = tmp_path / "figs" / "lb.png"
    assert run_cli(["leaderboard", "--out", str(runs), "--format", "csv", "--plot", str(plot)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("preset,dataset,group") and "lb-pairs.png" in out.err
    for path in (plot, tmp_path / "figs" / "lb-pairs.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        img = mpimg.imread(path)
        assert img.shape[0] > 200 and img.std() > 0.05           # not a blank canvas
    assert run_cli(["leaderboard", "--out", str(runs), "--reference", "dkd"]) == 0
    assert "better / worse than `dkd`" in capsys.readouterr().out
    with pytest.raises(UsageError, match="valid choices"):
        run_cli(["leaderboard", "--out", str(runs), "--reference", "nope"])


def test_cd_plot_needs_rankable_data(tmp_path):
    write(tmp_path, "tiny", SWIN_R18, "kd", 0, record("tiny", SWIN_R18, "kd", 0, 70.0))
    with pytest.raises(UsageError, match="cannot draw a CD diagram"):
        plot_cd(collect(tmp_path), tmp_path / "cd.png")
    assert plot_paths("x/lb") == (Path("x/lb.png"), Path("x/lb-pairs.png"))


def test_a_one_distiller_grid_publishes_without_the_figures_it_cannot_draw(tmp_path):
    """README's first command gives a table of kd alone: no differences, gains or ranks to draw."""
    from kdbench.leaderboard.plots import plot_diffs
    from kdbench.leaderboard.publish import publish
    for seed, v in enumerate((70.0, 71.0)):
        write(tmp_path, "tiny", SWIN_R18, "kd", seed, record("tiny", SWIN_R18, "kd", seed, v))
    table = collect(tmp_path)
    with pytest.raises(UsageError, match="cannot draw differences to kd: no other distiller ran"):
        plot_diffs(table, tmp_path / "d.png")
    names = {p.name for p in publish(table, tmp_path / "pub", "lb")}
    assert {"lb.md", "lb.html", "lb-pairs.png"} <= names and "lb-diffs.png" not in names


def test_seeds_of_one_cell_are_one_configuration(tmp_path):
    pair = SWIN_R18
    for seed in range(3):
        for d in ("kd", "fitnet"):
            lr = 0.1 if d == "kd" or seed < 2 else 0.2            # one fitnet seed ran another recipe
            cfg = {"seed": seed, "recipe": {"lr": lr}, "distiller": {"name": d}}
            write(tmp_path, "tiny", pair, d, seed, record("tiny", pair, d, seed, 70.0 + seed, config=cfg,
                                                           config_hash=f"{d}-{seed}-{lr}"))
    md = render(collect(tmp_path), "md")
    assert "fitnet: runs with 2 different configurations" in md
    assert "kd: runs with" not in md


def test_collect_restricted_to_pairs_and_distillers(runs):
    t = collect(runs, pairs="swin_tiny_patch4_window7_224:resnet18,mixer_b16_224:deit_tiny_patch16_224",
                       distillers="vanilla,kd,dkd")
    assert [(r.teacher, r.student) for r in t.rows] == [SWIN_R18, MIXER_DEIT]
    assert t.distillers == ["vanilla", "kd", "dkd"] and t.problems[0]["dir"].endswith("dkd/seed3")
    assert t.friedman is not None and t.friedman.n == 2        # both pairs complete for all three
    full = collect(runs)
    assert cell(t, MIXER_DEIT, "kd").values == cell(full, MIXER_DEIT, "kd").values
    assert [(r.teacher, r.student) for r in collect(runs, pairs="vit-mlp-students").rows] == \
        [MIXER_DEIT, CONV_RESMLP]                            # a pair set in preset order


@pytest.mark.parametrize("kw, words", [
    ({"distillers": "kd,pat"}, ["pat", "dkd, fitnet, kd, vanilla"]),
    ({"pairs": "swin_tiny_patch4_window7_224:nope"}, ["nope"]),
    ({"pairs": "no-such-set"}, ["no-such-set", "cnn-students"]),
])
def test_collect_filters_reject_unknown_names(runs, kw, words):
    with pytest.raises(UsageError) as err:
        collect(runs, **kw)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_exact_ties_share_rank_and_bold(tmp_path):
    # the two orders of the same three values average to means that differ in the last bit
    vals = {"dkd": [46.02, 47.0, 47.99], "fitnet": [46.02, 47.99, 47.0], "kd": [45.0, 45.5, 46.0]}
    for pair, shift in ((SWIN_R18, 0.0), (MIXER_DEIT, 0.0), (CONV_RESMLP, 1.0)):
        for d, v in vals.items():
            for seed, x in enumerate(v):
                write(tmp_path, "tiny", pair, d, seed, record("tiny", pair, d, seed, x + (shift if d == "kd" else 0)))
    t = collect(tmp_path)
    dkd, fitnet = cell(t, SWIN_R18, "dkd"), cell(t, SWIN_R18, "fitnet")
    assert dkd.mean != fitnet.mean and round(dkd.mean, 2) == round(fitnet.mean, 2)
    assert dkd.best_in_row and fitnet.best_in_row
    ranks = dict(zip(t.friedman.names, t.friedman.avg_ranks))
    assert ranks["dkd"] == ranks["fitnet"] == 1.5 and ranks["kd"] == 3.0
    over_kd = t.blocks[0].over_reference
    assert (over_kd["dkd"].wins, over_kd["fitnet"].wins) == (3, 3)


def test_csv_and_json_recompute_every_statistic(runs):
    """Per-seed values in CSV/JSON are enough to recompute means, paired differences and gains."""
    t = collect(runs)
    rows = list(csv.DictReader(io.StringIO(render(t, "csv"))))
    by = {(r["teacher"], r["distiller"]): r for r in rows}
    for r in rows:
        seeds = [int(s) for s in r["seeds"].split()]
        values = [float(v) for v in r["top1_per_seed"].split()]
        assert len(seeds) == len(values) == int(r["n"])
        assert float(r["mean"]) == pytest.approx(np.mean(values))
        if r["diff_vs_ref"]:
            ref = by[(r["teacher"], "kd")]
            ref_values = dict(zip(map(int, ref["seeds"].split()), map(float, ref["top1_per_seed"].split())))
            d = [v - ref_values[s] for s, v in zip(seeds, values) if s in ref_values]
            assert float(r["diff_vs_ref"]) == pytest.approx(np.mean(d))
            if r["effect_size_dz"]:
                assert float(r["effect_size_dz"]) == pytest.approx(np.mean(d) / np.std(d, ddof=1))
    doc = json.loads(render(t, "json"))
    cells = {(c["teacher"], c["distiller"]): c for c in doc["cells"]}
    assert cells[(SWIN_R18[0], "kd")]["top1_per_seed"] == {"0": 73.0, "1": 74.5, "2": 75.0}
    assert cells[(SWIN_R18[0], "kd")]["pair"] == "Swin-T → ResNet18" and cells[(SWIN_R18[0], "kd")]["method"] == "KD"
    block = next(b for b in doc["across_pairs"] if b["group"] == "all pairs" and b["baseline"] == "vanilla")
    kd = next(r for r in block["rows"] if r["name"] == "kd")
    gains = [cells[(p[0], "kd")]["mean"] - cells[(p[0], "vanilla")]["mean"] for p in TOP1]
    assert kd["pairs"] == 4 and kd["mean_gain"] == pytest.approx(np.mean(gains))
    assert kd["median_gain"] == pytest.approx(np.median(gains)) and kd["ci_low"] <= kd["mean_gain"] <= kd["ci_high"]
    assert {b["group"] for b in doc["across_pairs"]} == {"all pairs", "CNN students", "ViT-MLP students", "Other pairs"}
    assert doc["friedman"]["pairs"] == 3 and doc["friedman"]["cd"] is None and doc["friedman"]["vs_control"] == []


def test_holm_note_counts_only_tests_that_ran(runs):
    md = render(collect(runs), "md")
    # 12 comparisons with kd; the custom pair's three have one seed each (no test): 9 were tested
    assert "Holm-adjusted over the 9 comparisons that had a test" in md
    assert "not evidence of no difference" in md


def test_findings_are_generated_from_the_table(runs):
    text = render(collect(runs), "findings")
    assert "Best average rank over all pairs (3 pairs, 4 distillers): DKD (1.33)" in text
    assert "FitNet on Mixer-B/16 → DeiT-T 41.00 vs 51.00 (-10.00)" in text
    assert "KD is above From scratch on 4 of 4 pairs" in text
    # FitNet (69.50, 41.00, 62.00) against the better of KD and DKD (74.67, 57.17, 64.33) on the three
    # pairs where all three ran
    assert ("Feature-level methods (FitNet) vs logit-level (KD and DKD): the best feature-level method is above "
            "the best logit-level one on 0 of 3 pairs (median difference -5.17); every feature-level method is "
            "above every logit-level one on 0.") in text


def test_paper_order_finding_counts_method_pairs_by_hand(runs):
    """tiny is a miniature of the CIFAR-100 table: its cells carry no published number (no gap at another
    scale), its rows the paper's numbers, and the finding compares orders. By hand, with published.yaml
    (From scratch = the student's scratch number): Swin-T->R18 paper DKD > FitNet > KD > scratch, here
    DKD > KD > scratch > FitNet: 4 of 6 method pairs alike; Mixer->DeiT-T paper DKD > KD > FitNet > scratch,
    here DKD > KD > scratch > FitNet: 5 of 6; ConvNeXt->ResMLP paper DKD > KD > scratch > FitNet, here
    KD > DKD > FitNet > scratch: 4 of 6, and the paper's best (DKD everywhere) is not best here. Mixer->DeiT-T's
    KD, DKD and FitNet numbers are recalled (R): 3 of the 12 compared."""
    t = collect(runs)
    assert t.order_source == "cifar100" and t.published_protocol is None
    row = next(r for r in t.rows if (r.teacher, r.student) == SWIN_R18)
    assert row.paper_values == {"vanilla": (74.01, "V"), "kd": (78.74, "V"), "dkd": (80.26, "V"), "fitnet": (78.87, "V")}
    assert all(c.published is None for r in t.rows for c in r.cells.values())
    assert ("Order of methods against the paper's table (published.yaml `cifar100`, the methods it reports on each "
            "pair): 13 of 18 method pairs in the paper's order, 5 reversed, over 3 pairs (gamma +0.44; 3 of the 12 "
            "published numbers compared are recalled (R)); the paper's best (DKD on 3) is best here among the methods it "
            "reports on 2 of 3, and among all 4 columns on 2 of 3.") in render(t, "findings")


def test_finished_only_leaves_runs_in_progress_out(runs):
    t = collect(runs, finished_only=True)
    assert [p["status"] for p in t.problems] == ["failed"]            # the unfinished seed 3 is not listed
    assert cell(t, MIXER_DEIT, "dkd").unfinished == 0
    assert collect(runs).problems[-1]["status"] == "unfinished"


@pytest.mark.parametrize("preset, pair, at_scale", [
    ("coco", ("swin_tiny_patch4_window7_224", "resnet18"), True),
    ("det-tiny", ("kdbench_swin_t_s", "kdbench_resnet18_s"), False)])
def test_detection_tables_meet_the_papers_map(tmp_path, preset, pair, at_scale):
    """coco reproduces PAT's detection table: its cells carry the published mAP and the gap; det-tiny, its
    miniature, only compares the order (paper: PAT 35.62 > FitNet 35.23 > KD 34.07 > OFA 33.37; here
    FitNet > KD > PAT > OFA: 4 of 6 method pairs alike, PAT's two pairs reversed)."""
    means = {"kd": 30.0, "ofa": 29.0, "fitnet": 31.0, "pat": 29.5}
    for d, m in means.items():
        for seed, x in enumerate((m - 0.5, m + 0.5)):
            rec = record(preset, pair, d, seed, None, top5=None, task="detection", metric="map", metrics={"map": x})
            write(tmp_path, preset, pair, d, seed, rec)
    t = collect(tmp_path)
    kd = cell(t, pair, "kd")
    assert t.metric == "map" and t.order_source == "coco_detection"
    assert (kd.published, kd.gap) == ((34.07, pytest.approx(30.0 - 34.07)) if at_scale else (None, None))
    md = render(t, "md")
    assert ("pub.: published mAP (COCO 2017" in md) == at_scale
    assert ("Order of methods against the paper's table (published.yaml `coco_detection`, the methods it reports on "
            "each pair): 4 of 6 method pairs in the paper's order, 2 reversed, over 1 pair (gamma +0.33); the paper's "
            "best (PAT on 1) is best here among the methods it reports on 0 of 1, and among all "
            f"{len(t.distillers)} columns on 0 of 1.") in render(t, "findings")


def test_a_table_that_mixes_allocators_says_so(runs):
    """Wall times under tcmalloc and glibc are not comparable: the table notes the mix (records without
    `versions.malloc` predate it and count as system)."""
    assert not any("allocators" in n for n in collect(runs).notes)
    write(runs, "tiny", SWIN_R18, "vanilla", 3, record("tiny", SWIN_R18, "vanilla", 3, 71.0,
                                                       versions={"malloc": "tcmalloc"}))
    assert ("Wall times and memory mix memory allocators: 38 runs under system, 1 run under tcmalloc"
            in render(collect(runs), "md"))


def test_from_scratch_runs_once_per_student_and_serves_each_of_its_pairs(tmp_path):
    """Issue 29: From scratch depends only on the student. Vanilla run on Swin-T -> ResNet18 only serves
    ViT-S -> ResNet18 too (its own per-pair test against KD there), and the runs are counted once."""
    vit_r18 = ("kdbench_vit_s_s", "kdbench_resnet18_s")
    for pair, kd in ((SWIN_R18, [73.0, 74.5, 75.0]), (vit_r18, [71.0, 72.0, 74.0])):
        for seed, v in enumerate(kd):
            write(tmp_path, "tiny", pair, "kd", seed, record("tiny", pair, "kd", seed, v))
    for seed, v in enumerate([70.0, 71.0, 72.0]):
        write(tmp_path, "tiny", SWIN_R18, "vanilla", seed, record("tiny", SWIN_R18, "vanilla", seed, v))
    t = collect(tmp_path)
    own, shared = cell(t, SWIN_R18, "vanilla"), cell(t, vit_r18, "vanilla")
    assert own.shared_from is None and shared.shared_from == "kdbench_swin_t_s → kdbench_resnet18_s"
    assert shared.values == own.values and shared.mean == 71.0
    assert shared.comparison.diff == pytest.approx(71.0 - (71.0 + 72.0 + 74.0) / 3)    # against that pair's KD
    assert own.comparison.diff == pytest.approx(71.0 - (73.0 + 74.5 + 75.0) / 3)
    assert t.gains["kd"]["pairs"] == 2
    findings = render(t, "findings")
    assert "Coverage: 9 finished runs" in findings                        # 6 KD + 3 From scratch, not 12
    assert "ran once per student: 1 pair(s) take the From-scratch runs" in render(t, "md")
