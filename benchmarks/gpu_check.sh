#!/usr/bin/env bash
# GPU check: the CUDA path end to end in a few minutes; figures go to OUT_DIR.
#   benchmarks/gpu_check.sh OUT_DIR            (needs: pip install -e . done, a CUDA device)
# 1. smoke grid on the GPU (kd, fitnet, ofa, pat on 2 pairs): records, bf16 autocast, device data
# 2. step-time benchmark of every distiller on the lite preset (32 px, CIFAR-100 shapes, bf16)
# 3. the data loader alone: device-resident vs torchvision DataLoader (synthetic data, 32 px)
set -euo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
DEVICE=${KDBENCH_DEVICE:-cuda}
STEPS=${KDBENCH_STEPS:-30}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
python - <<PY > "$OUT/device.json"
import json, torch
d = {"torch": torch.__version__, "cuda": torch.version.cuda, "available": torch.cuda.is_available()}
if torch.cuda.is_available():
    d.update(name=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported(),
             memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
print(json.dumps(d, indent=2))
PY
cat "$OUT/device.json"
start=$(date +%s)
python -m kdbench run --device "$DEVICE" --preset smoke --distiller kd,fitnet,ofa,pat \
  --pairs swin_tiny_patch4_window7_224:resnet18,convnext_tiny:deit_tiny_patch16_224 \
  --out "$OUT/runs" > "$OUT/smoke-leaderboard.md" 2> "$OUT/smoke.log"
echo "smoke grid: $(( $(date +%s) - start )) s" | tee "$OUT/timings.txt"
for pair in swin_tiny_patch4_window7_224:resnet18 convnext_tiny:deit_tiny_patch16_224 mixer_b16_224:swin_pico_patch4_window7_224; do
  python -m kdbench bench --device "$DEVICE" --preset lite --pair "$pair" --distillers all --steps "$STEPS" --json \
    > "$OUT/bench-lite-${pair%%:*}.json"
done
echo "bench: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
python -m kdbench bench --device "$DEVICE" --data --preset smoke --set data.img_size=32 --set data.synthetic_train=50000 \
  --batch-size 256 --steps 150 --json > "$OUT/bench-data.json"
python -m kdbench bench --device "$DEVICE" --preset lite --pair convnext_tiny:deit_tiny_patch16_224 \
  --distillers kd,pat --steps "$STEPS" --set compile=true --json > "$OUT/bench-lite-compile.json" || true
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("bench-*.json")):
    for r in json.loads(f.read_text()):
        if "loader" in r:
            print(f"{f.name:32s} {r['loader']:44s} {r['img_per_s']:>10} img/s  x{r['ratio_to_torchvision']}")
        else:
            print(f"{f.name:32s} {r['pair'][:40]:40s} {r['distiller']:9s} {r['img_per_s']:>9} img/s "
                  f"{r['step_ms']:>8} ms  x{r['ratio_to_kd']}  {r['peak_mem_mb']} MB  warm-up {r['warmup_s']} s")
PY
