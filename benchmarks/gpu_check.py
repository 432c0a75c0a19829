"""Helpers of gpu_check.sh: the device probe (a matmul peak in the dtype runs use) and the summary.

    python benchmarks/gpu_check.py probe OUT_DIR DEVICE     -> OUT_DIR/device.json
    python benchmarks/gpu_check.py boxes OUT_DIR DEVICE     -> OUT_DIR/boxes.json (detection box dtypes)
    python benchmarks/gpu_check.py summary OUT_DIR          -> OUT_DIR/gpu-check.json (+ printed table)

The summary joins the dry runs' step times with `kdbench plan`'s training FLOPs per image: achieved
TFLOP/s = FLOPs/img x img/s, utilisation = achieved / the probe's matmul peak. The median eager
utilisation is what `kdbench plan` projects with once benchmarks/results/gpu-utilisation.json holds it.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from kdbench.results import iter_records


def probe(out: Path, device_name: str) -> dict:
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    d = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device_name,
         "name": torch.cuda.get_device_name(device) if cuda else "cpu"}
    if cuda:
        d.update(bf16=torch.cuda.is_bf16_supported(),
                 memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    dtype = torch.bfloat16 if cuda and d["bf16"] else torch.float32
    n, reps = (8192, 50) if cuda else (512, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    d["matmul_dtype"] = str(dtype).replace("torch.", "")
    d["matmul_tflops"] = round(2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12, 3)
    (out / "device.json").write_text(json.dumps(d, indent=2) + "\n")
    return d


def boxes(out: Path, device_name: str) -> dict:
    """A det-smoke detector on the device under the runs' autocast: proposals, ROI outputs and final boxes
    must be float32 (torchvision would decode them in bf16)."""
    from kdbench.detection.model import build_detector       # deferred: only this step needs the detector
    device = torch.device(device_name)
    torch.manual_seed(0)
    d = build_detector("kdbench_resnet18_xs", num_classes=4, img_size=64, fpn_channels=16,
                       representation_size=32).to(device).train()
    images = torch.randn(2, 3, 64, 64, device=device)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]], device=device),
                "labels": torch.tensor([1], device=device)}] * 2
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    with torch.autocast(device.type, dtype=dtype):
        step = d.forward_train(images, targets)
        d.eval()
        with torch.no_grad():
            final = d(images)
    result = {"autocast": str(dtype).replace("torch.", ""),
              "proposals": sorted({str(p.dtype).replace("torch.", "") for p in step.proposals}),
              "box_regression": str(step.box_regression.dtype).replace("torch.", ""),
              "boxes": sorted({str(o["boxes"].dtype).replace("torch.", "") for o in final})}
    result["ok"] = result["proposals"] == result["boxes"] == ["float32"] and result["box_regression"] == "float32"
    (out / "boxes.json").write_text(json.dumps(result, indent=2) + "\n")
    if not result["ok"]:
        raise SystemExit(f"detection boxes not float32 under {result['autocast']} autocast: {result}")
    return result


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(out: Path) -> dict:
    """The check's figures from whatever its steps left: a failed or cut step keeps the others' figures."""
    device = _json(out / "device.json") or {"name": "unknown (the probe failed)", "matmul_tflops": None,
                                             "matmul_dtype": None}
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    flops = {}
    if (out / "plan.json").exists():
        flops = {(c["teacher"], c["student"], c["distiller"]): c["train_flops_per_img"]
                 for c in json.loads((out / "plan.json").read_text())["cells"]}
    cells = []
    for mode in ("eager", "compile", "fused", "faithful", "faithful-compile", "heaviest"):   # a cut step keeps its cells
        for path in sorted((out / f"dry-{mode}").rglob("dry.json")):
            row = json.loads(path.read_text())
            cell = {"mode": mode, **{k: row.get(k) for k in ("teacher", "student", "distiller", "status", "error",
                                                             "batch_size", "precision", "step_s", "first_step_s",
                                                             "img_per_s", "peak_mem_mb", "extra_params")}}
            f = flops.get((row["teacher"], row["student"], row["distiller"]))
            if f and row.get("img_per_s") and device["matmul_tflops"]:
                cell["achieved_tflops"] = round(f * row["img_per_s"] / 1e12, 4)
                cell["utilisation"] = round(f * row["img_per_s"] / 1e12 / device["matmul_tflops"], 4)
            cells.append(cell)
    eager = [c["utilisation"] for c in cells if c["mode"] == "eager" and "utilisation" in c]
    tiny = []
    for rec in iter_records(out / "tiny") if (out / "tiny").is_dir() else []:       # the record contract's reader
        tiny.append({k: getattr(rec, k) for k in ("distiller", "teacher", "student", "status", "error", "top1",
                                                  "teacher_top1", "wall_s", "train_img_per_s", "peak_mem_mb")})
    result = {"device": device, "steps": steps, "dry_run": cells, "tiny": tiny, "boxes": _json(out / "boxes.json"),
              "overhead": _json(out / "overhead.out"), "tiny_vs_cpu": _tiny_vs_cpu(tiny),
              "utilisation": round(statistics.median(eager), 3) if eager else None,
              "ok": all(s["rc"] == 0 for s in steps)}
    (out / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    if result["utilisation"] is not None:
        (out / "gpu-utilisation.json").write_text(json.dumps(
            {"device": device["name"], "utilisation": result["utilisation"],
             "source": "median eager utilisation of gpu_check.sh's paper dry run"}, indent=2) + "\n")
    return result


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tiny_vs_cpu(tiny):
    """The tiny runs' top-1 against the committed CPU leaderboard's same cells (seed 0): device noise."""
    from kdbench.leaderboard import collect        # deferred: the summary alone needs the leaderboard
    root = Path(__file__).resolve().parent / "results" / "tiny" / "runs"
    if not tiny or not root.is_dir():
        return []
    cpu = {(r.teacher, r.student, name): c.values.get(0) for r in collect(root, "tiny", finished_only=True).rows
           for name, c in r.cells.items()}
    return [{"distiller": t["distiller"], "gpu": t["top1"], "cpu": cpu.get((t["teacher"], t["student"], t["distiller"])),
             "diff": None if t["top1"] is None or cpu.get((t["teacher"], t["student"], t["distiller"])) is None
             else round(t["top1"] - cpu[(t["teacher"], t["student"], t["distiller"])], 2)} for t in tiny]


def format_summary(result: dict) -> str:
    lines = [f"device: {result['device']['name']}, matmul peak {result['device']['matmul_tflops']} TFLOP/s "
             f"({result['device']['matmul_dtype']})"]
    lines += [f"step {s['step']:12s} rc {s['rc']:3d}  {s['seconds']:6.0f} s" for s in result["steps"]]
    for c in result["dry_run"]:
        if c["status"] != "done":
            lines.append(f"{c['mode']:7s} {c['teacher']}->{c['student']} {c['distiller']}: FAILED {c['error']}")
            continue
        lines.append(f"{c['mode']:7s} {c['teacher'][:28]:28s} -> {c['student'][:24]:24s} {c['distiller']:5s} "
                     f"{c['step_s'] * 1000:8.1f} ms/step {c['img_per_s']:8.1f} img/s {c['peak_mem_mb']:8.0f} MB "
                     f"util {c.get('utilisation', '-')}")
    lines += [f"tiny {t['distiller']:5s} {t['status']} top1 {t['top1']} wall {t['wall_s']} s" for t in result["tiny"]]
    lines.append(f"median eager utilisation: {result['utilisation']}; all steps ok: {result['ok']}")
    return "\n".join(lines)


if __name__ == "__main__":
    what, folder = sys.argv[1], Path(sys.argv[2])
    if what == "probe":
        print(json.dumps(probe(folder, sys.argv[3]), indent=2))
    elif what == "boxes":
        print(json.dumps(boxes(folder, sys.argv[3]), indent=2))
    else:
        res = summary(folder)
        print(format_summary(res))
        sys.exit(0 if res["ok"] else 1)
