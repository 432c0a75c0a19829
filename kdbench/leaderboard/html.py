"""The leaderboard as one self-contained HTML page: method summary, a sortable cells table, figures
and training curves (inline SVG), from the JSON document (render `_json`), PNG bytes and metrics rows.

A missing key or a None renders as "—". No network, no external assets, no timestamps: the same
input gives the same bytes, so a committed report regenerates exactly."""

import base64
import html
import math
import numbers
from typing import Callable, Dict, List, Sequence, Tuple

DASH = "—"
FIGURE_CAPTIONS = {"cd": "Critical-difference diagram: average rank over pairs (lower is better); methods joined "
                         "by a bar are not significantly different.",
                   "diffs": "Per-pair difference in top-1 to the reference, with 95 % intervals.",
                   "cost": "Accuracy against cost: top-1 against training cost."}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
PANEL_W, PANEL_H, PAD_L, PAD_B, PAD_T, LEGEND_H = 290, 150, 40, 20, 8, 16


def _raw(x) -> str:
    return DASH if x is None else str(x)


def _e(x) -> str:
    """Escaped text; None is "—"."""
    return html.escape(_raw(x))


def _is_num(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _num(x, digits: int = 2, sign: bool = False) -> str:
    return (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}") if _is_num(x) else DASH


def _p(x) -> str:
    return f"{x:.3g}" if _is_num(x) else DASH


def _si(x) -> str:
    """A count with an SI suffix (1.23 M)."""
    if not _is_num(x):
        return DASH
    for div, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:g}"


def _list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else []


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _td(text: str, sort=None, cls: str = "", title: str = "") -> str:
    """A cell; `sort` is the raw number the table sorts by ("" sorts last)."""
    attrs = f' data-sort="{float(sort)!r}"' if _is_num(sort) else ' data-sort=""' if sort is not None else ""
    attrs += f' class="{cls}"' if cls else ""
    attrs += f' title="{_e(title)}"' if title else ""
    return f"<td{attrs}>{text}</td>"


def _table(head: Sequence[str], rows: List[str], attrs: str = "") -> str:
    return f"<table{attrs}><thead><tr>{''.join(head)}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def _header(doc: dict) -> str:
    title = f"kdbench leaderboard: preset {doc.get('preset') or DASH} ({doc.get('dataset') or DASH})"
    meta = [("reference", doc.get("reference")), ("metric", doc.get("metric")), ("runs", doc.get("out")),
            ("published numbers", doc.get("published_protocol"))]
    out = [f"<title>{_e(title)}</title>", "</head><body>", f"<h1>{_e(title)}</h1>", "<p class=meta>"
           + " · ".join(f"{k}: {_e(v)}" for k, v in meta) + "</p>"]
    if notes := _list(doc.get("notes")):
        out.append("<ul class=notes>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    if problems := _list(doc.get("problems")):
        items = "".join(f"<li>{_e(_dict(p).get('status'))}: <code>{_e(_dict(p).get('dir'))}</code>: "
                        f"{_e(' '.join(str(_dict(p).get('error') or DASH).split()))}</li>" for p in problems)
        out.append(f"<h2>Runs not included</h2><ul class=problems>{items}</ul>")
    return "\n".join(out)


def _friedman_line(fr: dict) -> str:
    parts = [f"Friedman test over {_e(fr.get('pairs'))} pairs, k = {_e(fr.get('k'))}: "
             f"χ² = {_num(fr.get('chi2'))}, p = {_p(fr.get('p'))}",
             f"Iman–Davenport F = {_num(fr.get('iman_davenport_f'))}, p = {_p(fr.get('iman_davenport_p'))}",
             f"Nemenyi CD (α = {_e(fr.get('alpha'))}) = {_num(fr.get('cd'))}",
             f"Bonferroni–Dunn CD vs {_e(fr.get('control') or DASH)} = {_num(fr.get('bonferroni_dunn_cd'))}"]
    note = f" ({_e(fr['note'])})" if fr.get("note") else ""
    return f"<p class=friedman>{'; '.join(parts)}{note}.</p>"


def _gain_cells(r: dict) -> List[str]:
    ci = f"[{_num(r.get('ci_low'), sign=True)}, {_num(r.get('ci_high'), sign=True)}]"
    wtl = "/".join(str(r[k]) if _is_num(r.get(k)) else DASH for k in ("wins", "ties", "losses"))
    note = f"; {r['note']}" if r.get("note") else ""
    return [_td(_num(r.get("mean_gain"), sign=True), title=f"over {_raw(r.get('pairs'))} pairs"), _td(ci),
            _td(_num(r.get("median_gain"), sign=True)), _td(wtl),
            _td(_p(r.get("p_holm")), title=f"unadjusted p = {_p(r.get('p_wilcoxon'))}{note}")]


def _summary(doc: dict) -> str:
    """Per group one table, a row per method: its average rank and Holm-adjusted rank test against
    the control (the group's Friedman analysis), then the group's across-pairs blocks side by side."""
    distillers = {d.get("name"): d for d in map(_dict, _list(doc.get("distillers")))}
    blocks = [_dict(b) for b in _list(doc.get("across_pairs"))] or [      # an older document: its average gains
        {"group": "all pairs", "baseline": "vanilla", "rows": [
            {"name": n, "mean_gain": d.get("avg_gain_over_vanilla"), "pairs": d.get("gain_pairs")}
            for n, d in distillers.items()]}]
    rows_of = [{r.get("name"): r for r in map(_dict, _list(b.get("rows")))} for b in blocks]
    display = {n: r.get("method") for rows in [distillers] + rows_of for n, r in rows.items() if r.get("method")}
    out = ["<h2>Methods</h2>"]
    for gi, group in enumerate(dict.fromkeys(b.get("group") for b in blocks)):
        mine = [i for i, b in enumerate(blocks) if b.get("group") == group]
        fr = _dict(blocks[mine[0]].get("friedman")) or (_dict(doc.get("friedman")) if gi == 0 else {})
        ranks = _dict(fr.get("avg_ranks")) or ({n: d.get("avg_rank") for n, d in distillers.items()} if gi == 0 else {})
        vs = {v.get("name"): v for v in map(_dict, _list(fr.get("vs_control")))}
        head = ["<th>Method</th>", "<th>Avg. rank</th>", f"<th>Rank diff. vs {_e(fr.get('control'))}</th>",
                f"<th>p vs {_e(fr.get('control'))} (Holm)</th>"]
        for i in mine:
            head += [f"<th>Gain vs {_e(blocks[i].get('baseline'))}</th>", "<th>95 % CI</th>", "<th>Median</th>",
                     "<th>W/T/L</th>", "<th>p (Wilcoxon, Holm)</th>"]
        rows = []
        for name in dict.fromkeys(list(distillers) + [n for i in mine for n in rows_of[i]]):
            v = vs.get(name, {})
            cells = [_td(_e(display.get(name) or name), title=_raw(name)), _td(_num(ranks.get(name))),
                     _td(_num(v.get("rank_diff"), sign=True)),
                     _td(_p(v.get("p_holm")), title=f"z = {_num(v.get('z'))}, unadjusted p = {_p(v.get('p'))}")]
            for i in mine:
                cells += _gain_cells(rows_of[i].get(name, {}))
            rows.append("<tr>" + "".join(cells) + "</tr>")
        out.append(f"<h3>{_e(group)}</h3>" + _table(head, rows, " class=summary") + (_friedman_line(fr) if fr else ""))
    return "\n".join(out)


def _metric(doc: dict) -> Tuple[str, str]:
    """(the document's metric key, as people read it): ("top1", "top-1") or ("map", "mAP")."""
    key = str(doc.get("metric") or "top1").split()[0]
    return key, {"top1": "top-1", "map": "mAP"}.get(key, key)


def _relabel(text: str, label: str) -> str:
    """`text` written for top-1, for the document's metric."""
    capital = label if label[1:2].isupper() else label[:1].upper() + label[1:]       # mAP stays mAP
    return text.replace("Top-1", capital).replace("top-1", label)


def _pair(c: dict) -> str:
    return c.get("pair") or f"{c.get('teacher') or DASH} → {c.get('student') or DASH}"


# (key, header, type, tooltip); type "num" sorts by data-sort, "text" by the cell's text
COLUMNS = (("pair", "Pair", "text", "teacher → student"), ("group", "Group", "text", ""), ("method", "Method", "text", ""),
           ("mean", "Mean ± std", "num", "top-1 (%) over seeds"), ("ci", "95 % CI", "num", "sorts by its lower end"),
           ("seeds", "Top-1 per seed", "num", "sorts by the worst seed"), ("diff", "Δ vs ref.", "num", "paired by seed"),
           ("diff_ci", "Δ 95 % CI", "num", "sorts by its lower end"), ("dz", "d_z", "num", "paired effect size"),
           ("p_holm", "p (Holm)", "num", "†↑/†↓: significantly better/worse than the reference"),
           ("wall", "Wall (s)", "num", "mean over seeds"), ("ips", "img/s", "num", "training throughput"),
           ("mem", "Peak MB", "num", ""), ("extra", "Extra params", "num", ""), ("flops", "FLOPs/img", "num", "training"))


def _cell_row(i: int, c: dict) -> str:
    mean, std = c.get("mean"), c.get("std")
    mean_text = DASH if not _is_num(mean) else _num(mean) + (f" ± {_num(std)}" if _is_num(std) else "")
    if c.get("best_in_row") and _is_num(mean):
        mean_text = f"<b>{mean_text}</b>"
    seeds = sorted(((str(k), v) for k, v in _dict(c.get("top1_per_seed")).items()), key=lambda kv: (len(kv[0]), kv[0]))
    vals = [v for _, v in seeds if _is_num(v)]
    diff = c.get("diff_vs_ref")
    mark = "" if not c.get("significant") else "†↑" if _is_num(diff) and diff > 0 else "†↓"
    cells = [_td(_e(_pair(c)), title=f"{c.get('teacher') or DASH} → {c.get('student') or DASH}"),
             _td(_e(c.get("group"))),
             _td(_e(c.get("method") or c.get("distiller") or DASH), title=str(c.get("distiller") or "")),
             _td(mean_text, mean, title=f"n = {_raw(c.get('n'))}"),
             _td(f"[{_num(c.get('ci_low'))}, {_num(c.get('ci_high'))}]", c.get("ci_low")),
             _td(" / ".join(_num(v) for _, v in seeds) or DASH, min(vals) if vals else "",
                 title=", ".join(f"seed {k}" for k, _ in seeds)),
             _td(_num(diff, sign=True), diff),
             _td(f"[{_num(c.get('diff_ci_low'), sign=True)}, {_num(c.get('diff_ci_high'), sign=True)}]",
                 c.get("diff_ci_low")),
             _td(_num(c.get("effect_size_dz")), c.get("effect_size_dz")),
             _td(_p(c.get("p_holm")) + mark, c.get("p_holm"), "sig" if mark else "",
                 f"unadjusted p = {_p(c.get('p_t'))}" + (f"; {c['note']}" if c.get("note") else "")),
             _td(_num(c.get("wall_s_mean"), 0), c.get("wall_s_mean")),
             _td(_num(c.get("train_img_per_s_mean"), 0), c.get("train_img_per_s_mean")),
             _td(_num(c.get("peak_mem_mb_mean"), 0), c.get("peak_mem_mb_mean")),
             _td(_si(c.get("extra_params")), c.get("extra_params"), title=f"student: {_si(c.get('student_params'))}"),
             _td(_si(c.get("train_flops_per_img")), c.get("train_flops_per_img"))]
    return f'<tr data-i="{i}">' + "".join(cells) + "</tr>"


def _cells_table(doc: dict) -> str:
    label = _metric(doc)[1]
    head = [f'<th data-key="{k}" data-type="{t}" aria-sort="none" tabindex="0" title="{_e(_relabel(tip, label))}">'
            f'{_e(_relabel(h, label))}</th>' for k, h, t, tip in COLUMNS]
    ref = _e(doc.get("reference") or DASH)
    rows = [_cell_row(i, _dict(c)) for i, c in enumerate(_list(doc.get("cells")))]
    return (f"<h2>Cells</h2><p>Click a header to sort (again: descending). Δ and p: against <code>{ref}</code>."
            "</p>\n" + _table(head, rows, ' id="cells" class="cells"'))


def _figures(figures: dict, label: str = "top-1") -> str:
    keys = [k for k in [*FIGURE_CAPTIONS, *sorted(set(figures) - set(FIGURE_CAPTIONS))] if figures.get(k)]
    out = ["<h2>Figures</h2>"] if keys else []
    for k in keys:
        data = base64.b64encode(bytes(figures[k])).decode("ascii")
        cap = _e(_relabel(FIGURE_CAPTIONS.get(k, k), label))
        out.append(f'<figure><img alt="{cap}" src="data:image/png;base64,{data}"><figcaption>{cap}</figcaption></figure>')
    return "\n".join(out)


def _is_eval(row: dict) -> bool:
    return row.get("kind") == "epoch" or ("kind" not in row and "top1" in row)


def _mean_series(seeds: dict, want: Callable[[dict], bool], value: Callable[[dict], object]) -> List[Tuple[float, float]]:
    """(epoch, value averaged over the seeds that have it) in epoch order; None / non-finite skipped."""
    acc: Dict[float, List[float]] = {}
    for rows in seeds.values():
        for row in _list(rows):
            row = _dict(row)
            x, y = row.get("epoch"), value(row) if want(row) else None
            if _is_num(x) and _is_num(y):
                acc.setdefault(round(float(x), 4), []).append(float(y))
    return [(x, math.fsum(ys) / len(ys)) for x, ys in sorted(acc.items())]


def _ticks(lo: float, hi: float, n: int = 4) -> List[float]:
    """Round tick values covering [lo, hi] at a 1-2-5 step."""
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _panel(x0: int, series: List[Tuple[str, str, list, bool]], x_max: float) -> str:
    """One chart at horizontal offset `x0`: axes with ticks, a path per series, a legend below."""
    ys = [y for *_, pts, _ in series for _, y in pts]
    xt, yt = _ticks(0.0, max(x_max, 1e-9)), _ticks(min(ys), max(ys))
    left, top, w, h = x0 + PAD_L, PAD_T, PANEL_W - PAD_L - 8, PANEL_H - PAD_T - PAD_B

    def sx(x):
        return left + w * (x - xt[0]) / (xt[-1] - xt[0])

    def sy(y):
        return top + h * (1 - (y - yt[0]) / (yt[-1] - yt[0]))

    out = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="ax"/>']
    for t in xt:
        out.append(f'<text x="{sx(t):.1f}" y="{top + h + 13}" text-anchor="middle">{t:g}</text>')
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{left - 3}" y="{sy(t) + 3:.1f}" text-anchor="end">{t:g}</text>')
    lx = left
    for label, color, pts, markers in series:
        d = "".join(f"{'L' if j else 'M'}{sx(x):.1f} {sy(y):.1f}" for j, (x, y) in enumerate(pts))
        out.append(f'<path d="{d}" stroke="{color}"/>')
        if markers:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{color}"/>' for x, y in pts]
        out.append(f'<rect x="{lx}" y="{PANEL_H + 3}" width="10" height="3" fill="{color}"/>'
                   f'<text x="{lx + 13}" y="{PANEL_H + 8}">{_e(label)}</text>')
        lx += 22 + 6 * len(label)
    return "".join(out)


def curve_svg(seeds: dict, metric: Tuple[str, str] = ("top1", "top-1")) -> str:
    """An SVG for one cell's runs ({seed: metrics rows}): each loss term (left) and train / test
    top-1 (right) over epochs, averaged over the seeds; "" when the rows hold nothing to draw."""
    train = [r for rows in seeds.values() for r in _list(rows) if _dict(r).get("kind") == "train"]
    from_rows = (lambda r: _dict(r).get("kind") == "train") if train else _is_eval
    terms = list(dict.fromkeys(k for rows in seeds.values() for r in _list(rows) if from_rows(_dict(r))
                               for k in _dict(_dict(r).get("loss"))))
    loss = [(t, PALETTE[i % len(PALETTE)], _mean_series(seeds, from_rows, lambda r, t=t: _dict(r.get("loss")).get(t)),
             False) for i, t in enumerate(terms)]
    top1 = [("train top-1", PALETTE[2], _mean_series(seeds, lambda r: r.get("kind") == "train",
                                                      lambda r: r.get("train_top1")), False),
            (f"test {metric[1]}", PALETTE[3], _mean_series(seeds, _is_eval, lambda r: r.get(metric[0])), True)]
    panels = [[s for s in group if s[2]] for group in (loss, top1)]
    xs = [x for group in panels for *_, pts, _ in group for x, _ in pts]
    if not xs:
        return ""
    body = "".join(f'<g>{_panel(i * PANEL_W, group, max(xs))}'
                   f'<text x="{i * PANEL_W + PAD_L}" y="{PANEL_H + 2 * LEGEND_H - 2}" class="t">'
                   f'{"loss" if i == 0 else metric[1] + " (%)"} vs epoch</text></g>' for i, group in enumerate(panels) if group)
    return (f'<svg viewBox="0 0 {2 * PANEL_W} {PANEL_H + 2 * LEGEND_H}" '
            f'width="{2 * PANEL_W}" height="{PANEL_H + 2 * LEGEND_H}" class="curve">{body}</svg>')


def _curves(doc: dict, curves: dict) -> str:
    """Per pair a <details> with one chart per distiller, in the cells' order; then any curves
    without a cell, by key."""
    cells = [_dict(c) for c in _list(doc.get("cells"))]
    order: Dict[str, list] = {}
    for c in cells:
        key = f"{c.get('teacher')}__{c.get('student')}/{c.get('distiller')}"
        if key in curves:
            order.setdefault(_pair(c), []).append((c.get("method") or c.get("distiller"), key))
    known = {k for items in order.values() for _, k in items}
    for key in sorted(k for k in curves if k not in known):
        pair, _, dist = key.partition("/")
        order.setdefault(pair, []).append((dist or key, key))
    out = []
    for pair, items in order.items():
        charts = []
        for method, key in items:
            seeds = _dict(curves.get(key))
            svg = curve_svg(seeds, _metric(doc)) or f"<p>{DASH}</p>"
            charts.append(f"<figure class=curve><figcaption>{_e(method or DASH)} ({len(seeds)} seed"
                          f"{'' if len(seeds) == 1 else 's'}, mean)</figcaption>{svg}</figure>")
        out.append(f"<details><summary>{_e(pair)}</summary>{''.join(charts)}</details>")
    return "<h2>Training curves</h2>\n" + "\n".join(out) if out else ""


STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child,.cells tr>:nth-child(-n+3){text-align:left}.cells th{cursor:pointer;user-select:none}
.cells th[aria-sort=ascending]::after{content:" ▲"}.cells th[aria-sort=descending]::after{content:" ▼"}
td.sig{font-weight:bold;color:#a00}.meta{color:#555}figure{margin:1em 0}img{max-width:100%}summary{cursor:pointer}
figure.curve{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:13px;color:#444}
svg.curve text{font-size:10px;fill:#333}svg.curve .t{font-style:italic}svg.curve path{fill:none;stroke-width:1.5}
svg.curve .ax{fill:none;stroke:#999}svg.curve .grid{stroke:#eee}"""

# Numbers compare by data-sort; an empty data-sort ("—") stays last in both directions; ties keep
# the original (group) order.
SCRIPT = """(function(){
const table=document.getElementById('cells');if(!table)return;
const heads=[...table.tHead.rows[0].cells],body=table.tBodies[0];
function sortBy(th){
  const i=heads.indexOf(th),num=th.dataset.type==='num';
  const dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
  const key=r=>{const c=r.cells[i];if(!num){const t=c.textContent.trim();return t==='—'?null:t;}
    const s=c.dataset.sort;return s===''||s===undefined?null:parseFloat(s);};
  const rows=[...body.rows].map(r=>[key(r),+r.dataset.i,r]);
  rows.sort((a,b)=>{if(a[0]===null||b[0]===null){if(a[0]===b[0])return a[1]-b[1];return a[0]===null?1:-1;}
    const d=num?a[0]-b[0]:a[0].localeCompare(b[0]);return d?d*dir:a[1]-b[1];});
  rows.forEach(r=>body.appendChild(r[2]));
  heads.forEach(h=>h.setAttribute('aria-sort','none'));
  th.setAttribute('aria-sort',dir===1?'ascending':'descending');}
heads.forEach(th=>{th.addEventListener('click',()=>sortBy(th));
  th.addEventListener('keydown',e=>{if(e.key==='Enter'||e.key===' '){e.preventDefault();sortBy(th);}});});
})();"""


def render_html(doc: dict, *, figures: dict, curves: dict) -> str:
    """The leaderboard document `doc` (the JSON format's dict) as one self-contained, deterministic HTML page.

    `figures`: {"cd" | "diffs" | "cost": PNG bytes}, any subset; `curves`:
    {"<teacher>__<student>/<distiller>": {seed: metrics rows (results.read_metrics)}}."""
    doc, figures, curves = _dict(doc), _dict(figures), _dict(curves)
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<style>\n{STYLE}\n</style>", _header(doc), _summary(doc), _cells_table(doc), _figures(figures, _metric(doc)[1]),
             _curves(doc, curves), f"<script>\n{SCRIPT}\n</script>", "</body></html>"]
    return "\n".join(p for p in parts if p) + "\n"
