"""CPU thread and allocator settings for the tiny grid (issue 18), measured rather than assumed.

    python -m studies.cpu_settings [--steps 20] [--repeats 2] [--settings default,tcmalloc] [--json FILE]

Each setting runs `kdbench bench` (tiny preset, KD and PAT on two pairs) in a fresh process with its
environment; settings alternate over `--repeats` rounds and the median step time per row counts.
Settings whose library is missing (jemalloc, tcmalloc: Debian's libjemalloc2, libtcmalloc-minimal4)
are reported as skipped. Prints a Markdown table of each setting's step time relative to the default.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

LIBS = Path("/usr/lib/x86_64-linux-gnu")
SETTINGS = {
    "default": {},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "threads bound to cores": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    "oneDNN cache 4096": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "4096"},
    "jemalloc": {"LD_PRELOAD": str(LIBS / "libjemalloc.so.2"),
                 "MALLOC_CONF": "oversize_threshold:1,background_thread:true,metadata_thp:auto"},
    "tcmalloc": {"LD_PRELOAD": str(LIBS / "libtcmalloc_minimal.so.4")},
}
PAIRS = "convnext_tiny:deit_tiny_patch16_224,swin_tiny_patch4_window7_224:resnet18"


def run_bench(env_extra: dict, steps: int) -> list:
    cmd = [sys.executable, "-m", "kdbench", "bench", "--preset", "tiny", "--pair", PAIRS, "--distillers", "kd,pat",
           "--steps", str(steps), "--warmup", "3", "--device", "cpu", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True,      # only the setting's allocator
                          env={**os.environ, "KDBENCH_MALLOC": "system", "LD_PRELOAD": "", **env_extra})
    rows = json.loads(proc.stdout)
    preload = env_extra.get("LD_PRELOAD", "")
    expected = next((name for name in ("tcmalloc", "jemalloc") if name in preload), "system")
    if any(r["malloc"] != expected for r in rows):
        raise RuntimeError(f"{preload or 'no preload'}: the bench ran under {rows[0]['malloc']}, not {expected}")
    return rows


def measure(steps: int, repeats: int, names=tuple(SETTINGS)) -> list:
    chosen = {n: SETTINGS[n] for n in SETTINGS if n in names or n == "default"}
    usable = {n: e for n, e in chosen.items() if "LD_PRELOAD" not in e or Path(e["LD_PRELOAD"]).exists()}
    times = {n: {} for n in usable}
    for _ in range(repeats):
        for name, env in usable.items():
            for row in run_bench(env, steps):
                times[name].setdefault((row["pair"], row["distiller"]), []).append(row["step_ms"])
    rows = []
    for name in chosen:
        if name not in usable:
            rows.append({"setting": name, "env": SETTINGS[name], "skipped": "library not installed"})
            continue
        for key, ms in times[name].items():
            base = statistics.median(times["default"][key])
            rows.append({"setting": name, "env": SETTINGS[name], "pair": key[0], "distiller": key[1],
                         "step_ms": round(statistics.median(ms), 2), "runs_ms": ms,
                         "vs_default": round(statistics.median(ms) / base, 3)})
    return rows


def table(rows: list) -> str:
    lines = ["| setting | pair | distiller | ms/step | × default |", "|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['setting']} | - | - | skipped: {r['skipped']} | - |")
        else:
            lines.append(f"| {r['setting']} | {r['pair']} | {r['distiller']} | {r['step_ms']:.1f} | {r['vs_default']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)}")
    p.add_argument("--json")
    args = p.parse_args(argv)
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown setting {unknown[0]!r}; choose from: {', '.join(SETTINGS)}")
    rows = measure(args.steps, args.repeats, names)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
