"""The HTML leaderboard page (kdbench.html_report) on a synthetic document, and its sorting in a
real headless Chromium (kdbench.browser) where one is installed."""

import base64
import copy
import re
import struct
from html.parser import HTMLParser

import numpy as np
import pytest

from kdbench.browser import find_chromium
from kdbench.leaderboard.html import COLUMNS, DASH, render_html

EVIL = "<script>alert(1)</script>"
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                           "AAAABJRU5ErkJggg==")
PAIRS = [("CNN students", "swin_t", "resnet18", "Swin-T → ResNet18"),
         ("CNN students", "vit_s", "mobilenetv2", "ViT-S → MobileNetV2"),
         ("ViT-MLP students", "convnext_t", "deit_t", "ConvNeXt-T → DeiT-T")]
METHODS = [("vanilla", "Vanilla"), ("kd", "KD"), ("pat", EVIL)]


def _cell(i, group, teacher, student, pair, name, method):
    mean = 70.0 + (7 * i) % 11 + 0.25 * i              # distinct, not in table order
    c = {"group": group, "teacher": teacher, "student": student, "pair": pair, "distiller": name, "method": method,
         "n": 3, "mean": mean, "std": 0.5, "ci_low": mean - 1.2, "ci_high": mean + 1.2,
         "top1_per_seed": {"0": mean - 0.5, "1": mean, "2": mean + 0.5, "10": mean + 0.1},
         "diff_vs_ref": None if name == "kd" else mean - 72, "diff_ci_low": -1.0, "diff_ci_high": 2.0,
         "effect_size_dz": 1.5, "p_t": 0.01, "p_holm": 0.03, "significant": name == "pat", "best_in_row": False,
         "wall_s_mean": 100.0 + i, "train_img_per_s_mean": 900.5, "peak_mem_mb_mean": 1234.0,
         "extra_params": 12_345 if name == "pat" else 0, "student_params": 11_200_000, "train_flops_per_img": None}
    return c


def make_doc():
    cnn = {"pairs": 2, "k": 3, "chi2": 1.25, "p": 0.535, "cd": 2.34, "alpha": 0.05, "control": "kd",
           "avg_ranks": {"vanilla": 2.75, "kd": 1.25, "pat": 2.0},
           "vs_control": [{"name": "vanilla", "method": "Vanilla", "rank_diff": 1.5, "z": 1.5, "p": 0.13, "p_holm": 0.26}]}
    cells = [_cell(len(PAIRS) * p + m, *PAIRS[p], *METHODS[m]) for p in range(len(PAIRS)) for m in range(len(METHODS))]
    for k in ("mean", "std", "ci_low", "wall_s_mean", "effect_size_dz", "top1_per_seed"):
        del cells[4][k]                                   # an older or partial record: every missing key is "—"
    cells[5]["mean"] = None
    rows = [{"name": n, "method": m, "pairs": 3, "mean_gain": 0.5, "median_gain": 0.25, "ci_low": -0.5,
             "ci_high": 1.5, "wins": 5, "ties": 1, "losses": 3, "p_wilcoxon": 0.2, "p_holm": 0.4} for n, m in METHODS]
    return {"preset": "tiny", "dataset": "fashion-mnist", "out": "/runs", "reference": "kd",
            "metric": "top1 (final epoch, %)", "notes": ["A note & another."], "published_protocol": None,
            "problems": [{"status": "failed", "dir": "runs/x/pat/seed0", "error": "NaN\nloss"}],
            "distillers": [{"name": n, "method": m, "avg_gain_over_vanilla": 0.5, "gain_pairs": 3, "avg_rank": 1.5 + i}
                           for i, (n, m) in enumerate(METHODS)],
            "friedman": {"pairs": 3, "k": 3, "chi2": 4.5, "p": 0.105, "cd": 1.91, "alpha": 0.05, "note": "",
                         "iman_davenport_f": 3.25, "iman_davenport_p": 0.123, "control": "kd",
                         "bonferroni_dunn_cd": 1.66,
                         "vs_control": [{"name": "pat", "method": EVIL, "rank_diff": 1.0, "z": 1.2, "p": 0.2,
                                         "p_holm": 0.4321}]},
            # "all pairs" without its own Friedman analysis: the top-level one is used
            "across_pairs": [{"group": g, "baseline": b, "rows": rows, **({"friedman": cnn} if g != "all pairs" else {})}
                             for g in ("all pairs", "CNN students") for b in ("vanilla", "kd")],
            "cells": cells}


def _rows(seed, terms=("gt", "kd")):
    train = [{"kind": "train", "step": s, "epoch": s / 10, "lr": 0.1, "train_top1": 10.0 * s / 3 + seed,
              "loss": {t: 2.0 / (s + j + 1) + 0.01 * seed for j, t in enumerate(terms)}} for s in range(1, 21)]
    evals = [{"kind": "epoch", "epoch": e, "step": 10 * e, "loss": {t: 1.0 for t in terms}, "top1": 60.0 + e,
              "top5": 90.0} for e in (1, 2)]
    train[3]["loss"]["kd"] = None                         # a non-finite window is written as None
    return train + evals


def make_curves():
    curves = {"swin_t__resnet18/kd": {str(s): _rows(s) for s in range(3)},
              "swin_t__resnet18/pat": {"0": _rows(0, ("gt", "pat"))},
              # an older metrics file: evaluation rows only, without "kind"
              "vit_s__mobilenetv2/vanilla": {"0": [{"epoch": e, "step": e, "loss": {"gt": 1.0 / e}, "top1": 50.0 + e}
                                                   for e in (1, 2, 3)]},
              "orphan__pair/kd": {"0": _rows(0)}}
    return curves


class _Cells(HTMLParser):
    """The #cells table as rows of {column key: (text, data-sort)}."""

    def __init__(self, page):
        super().__init__()
        self.rows, self._in, self._cell = [], False, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._in = attrs.get("id") == "cells"
        elif self._in and tag == "tr" and "data-i" in attrs:
            self.rows.append([])
        elif self._in and tag == "td" and self.rows:
            self._cell = ["", attrs.get("data-sort")]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(tuple(self._cell))
            self._cell = None
        elif tag == "table":
            self._in = False

    def table(self):
        return [dict(zip((c[0] for c in COLUMNS), row)) for row in self.rows]


@pytest.fixture(scope="module")
def page():
    return render_html(make_doc(), figures={"cd": PNG_1PX, "cost": PNG_1PX}, curves=make_curves())


def test_self_contained(page):
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and not re.search(r"<script[^>]*\bsrc", page)
    assert all(v.startswith("data:image/png;base64,") for v in re.findall(r'\bsrc="([^"]*)"', page))
    assert not re.search(r'\bhref="(?!#)', page)
    assert page.count("<img") == 2 and page.count(base64.b64encode(PNG_1PX).decode()) == 2
    assert "Critical-difference diagram" in page and "against training cost" in page
    assert "Per-pair difference" not in page                     # no "diffs" figure given, no caption


def test_every_cell_is_a_row_with_its_display_names(page):
    doc, table = make_doc(), _Cells(page).table()
    assert len(table) == len(doc["cells"])
    for cell, row in zip(doc["cells"], table):                   # the document's (group) order
        assert (row["pair"][0], row["group"][0], row["method"][0]) == (cell["pair"], cell["group"], cell["method"])
    seeds = doc["cells"][0]["top1_per_seed"]
    assert table[0]["seeds"][0] == " / ".join(f"{seeds[s]:.2f}" for s in ("0", "1", "2", "10"))   # numeric order
    assert table[0]["mean"] == ("70.00 ± 0.50", "70.0")
    assert table[2]["p_holm"][0] == "0.03†↑" and table[0]["p_holm"][0] == "0.03"
    assert table[8]["extra"] == ("12.3 k", "12345.0")


def test_missing_values_are_dashes(page):
    table = _Cells(page).table()
    partial = table[4]
    for key in ("mean", "wall", "dz", "seeds", "flops"):
        assert partial[key][0] == DASH and not partial[key][1], key   # no data-sort: sorts last
    assert partial["ci"][0] == f"[{DASH}, 78.20]"
    assert table[5]["mean"][0] == DASH and table[1]["diff"][0] == DASH
    empty = render_html({}, figures={}, curves={})
    assert "preset —" in empty and "<h2>Figures</h2>" not in empty and "Training curves" not in empty
    sparse = render_html({"cells": [{"mean": np.float64(71.5), "extra_params": np.int64(7), "std": float("nan")}],
                          "friedman": None, "across_pairs": [{"rows": [{}]}]},
                         figures={"cd": None}, curves={"a__b/c": {"0": [{"kind": "train", "epoch": None}]}})
    row = _Cells(sparse).table()[0]
    assert row["pair"][0] == f"{DASH} → {DASH}" and row["mean"] == ("71.50", "71.5") and row["extra"] == ("7", "7.0")


def test_escapes_text(page):
    assert EVIL not in page and html_escaped(EVIL) in page
    assert page.count("<script") == 1                            # the page's own sorting script
    assert "A note &amp; another." in page and "NaN loss" in page


def html_escaped(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_summary_and_tests(page):
    assert "χ² = 4.50, p = 0.105" in page and "Iman–Davenport F = 3.25, p = 0.123" in page
    assert "Nemenyi CD (α = 0.05) = 1.91" in page and "Bonferroni–Dunn CD vs kd = 1.66" in page
    assert page.count("<table class=summary>") == 2 and page.count("<th>Gain vs vanilla</th>") == 2
    assert ">5/1/3<" in page and ">0.432<" in page and "[-0.50, +1.50]" in page
    assert "χ² = 1.25, p = 0.535" in page and "Nemenyi CD (α = 0.05) = 2.34" in page     # the CNN group's own
    cnn = page[page.index("<h3>CNN students</h3>"):]
    assert "<td>2.75</td><td>+1.50</td><td title=\"z = 1.50, unadjusted p = 0.13\">0.26</td>" in cnn
    assert "<td>1.50</td>" in page[:page.index("<h3>CNN students</h3>")]                  # vanilla's overall rank


def test_curves_are_inline_svg(page):
    svgs = re.findall(r"<svg .*?</svg>", page)
    assert len(svgs) == len(make_curves())                       # the orphan's too
    assert page.index("Swin-T → ResNet18</summary>") < page.index("orphan__pair</summary>")
    kd = svgs[0]
    assert ">gt<" in kd and ">kd<" in kd and ">train top-1<" in kd and ">test top-1<" in kd
    assert "3 seeds, mean" in page
    coords = re.findall(r"[MLxy]=?\"?(-?\d+\.\d+)", "".join(svgs))
    assert coords and all(len(c.split(".")[1]) == 1 for c in coords)
    assert ">gt<" in svgs[2] and ">test top-1<" in svgs[2] and ">train top-1<" not in svgs[2]   # eval rows only


def test_deterministic(page):
    curves = make_curves()
    shuffled = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(curves.items()))}
    again = render_html(copy.deepcopy(make_doc()), figures={"cost": PNG_1PX, "cd": PNG_1PX}, curves=shuffled)
    assert again == page


def _png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _browser_or_skip():
    if find_chromium() is None:
        pytest.skip("no chromium / chromium-browser / google-chrome on PATH (apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (the test extra)")
    from kdbench.browser import Browser
    return Browser


@pytest.mark.timeout(60)
def test_user_click_sorts_the_table(page, tmp_path):
    Browser = _browser_or_skip()
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    n, col = len(make_doc()["cells"]), [c[0] for c in COLUMNS].index("mean")
    keys = f"[...document.querySelectorAll('#cells tbody tr')].map(r => r.cells[{col}].dataset.sort || null)"
    with Browser(width=1200, height=800) as b:
        b.goto(str(path))
        assert b.evaluate("document.querySelectorAll('#cells tbody tr').length") == n
        original = b.evaluate(keys)
        for direction in ("ascending", "descending"):
            b.click("#cells th[data-key=mean]")
            got = b.evaluate(keys)
            numbers = [float(v) for v in got if v is not None]
            assert got[len(numbers):] == [None] * (n - len(numbers))     # "—" last both ways
            assert numbers == sorted(numbers, reverse=direction == "descending") and len(numbers) == n - 2
            assert b.evaluate("document.querySelector('#cells th[data-key=mean]').getAttribute('aria-sort')") == direction
        assert got != original
        data = b.screenshot(tmp_path / "shot.png", width=900)
    assert _png_size(data)[0] == 900 and (tmp_path / "shot.png").read_bytes() == data


@pytest.mark.timeout(60)
def test_screenshot_cli(page, tmp_path):
    _browser_or_skip()
    from kdbench.browser import main
    (tmp_path / "report.html").write_text(page, encoding="utf-8")
    out = tmp_path / "out.png"
    assert main(["screenshot", str(tmp_path / "report.html"), str(out), "--width", "640", "--height", "300"]) == 0
    assert _png_size(out.read_bytes()) == (640, 300)
