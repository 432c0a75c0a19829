#!/usr/bin/env bash
# The one script a GPU-lent session runs (about 8 minutes on one H100/H200); figures go to OUT_DIR.
#   benchmarks/gpu_check.sh OUT_DIR            (after `pip install -e .`; a CUDA device)
#   benchmarks/gpu_check.sh OUT_DIR --tiny     (CPU self-test of the same logic at smoke scale: tests use it)
# Steps (each runs even when an earlier one failed; its exit status and time go to steps.jsonl):
#   probe        device, bf16 support, a matmul peak in the runs' dtype
#   plan         training FLOPs per image of the checked cells (kdbench plan)
#   dry-eager    paper dry run: Swin-T->ResNet18 and ConvNeXt-T->DeiT-T x (kd, ofa, pat), batch 128,
#                synthetic 224-px data, bf16 autocast, channels_last
#   dry-compile  the same with torch.compile
#   dry-fused    pat with its clean and prompted teacher passes as one 2B batch (distiller.fused_teacher_passes)
#   faithful     PAT (official) eager and compiled, the same dry run (its closed form: one graph but the
#                deliberate eager clean-teacher step, tests/test_cuda_defects.py)
#   heaviest     peak memory of the heaviest cell: Mixer-B/16 -> ResNet18 PAT at batch 128
#   overhead     `kdbench bench --overhead` at paper scale: engine vs bare loop vs plain timm
#   teach-twice  `kdbench teach` twice on one cache: the second re-verifies (the re-verification rule)
#   detection    one det-tiny-pair cell for a few steps, and its proposals and boxes checked to be float32
#   tiny         the tiny grid's Swin-T->ResNet18 x (kd, pat), one seed, end to end (teacher trained);
#                Fashion-MNIST from $KDBENCH_DATA: the device machine has no network, so copy
#                /usr/share/datasets/fashion-mnist (30 MB) to .data/ (git-ignored), carry it, and
#                run `KDBENCH_DATA=.data benchmarks/gpu_check.sh "$OUT/check"`
#   summary      gpu-check.json (+ gpu-utilisation.json: copy it to benchmarks/results/ to commit it), also
#                when a step failed or timed out (each step's cells and figures are kept, its rc recorded)
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR [--tiny]}
MODE=${2:-full}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
: > "$OUT/steps.jsonl"
export HF_HUB_OFFLINE=1
PAIRS=swin_tiny_patch4_window7_224:resnet18,convnext_tiny:deit_tiny_patch16_224
if [ "$MODE" = "--tiny" ]; then
  DEVICE=cpu
  PAPER=(--preset smoke --pairs "$PAIRS" --set recipe.batch_size=16)
  TINY=(--preset smoke --pairs swin_tiny_patch4_window7_224:resnet18)
  HEAVY=(--preset smoke --pairs mixer_b16_224:resnet18 --set recipe.batch_size=16)
  DET=(--preset det-smoke --pairs det --set recipe.epochs=1 --set teacher.cnn.epochs=1 --set teacher.vit_mlp.epochs=1)
  OVER=(--preset smoke --pair swin_tiny_patch4_window7_224:resnet18)
  DRY_STEPS=2
  export TORCH_COMPILE_DISABLE=1      # the self-test checks the command lines, not inductor's C++ build
else
  DEVICE=${KDBENCH_DEVICE:-cuda}
  PAPER=(--preset paper --pairs "$PAIRS" --set recipe.batch_size=128 --set data.dataset=synthetic
         --set data.synthetic_classes=100 --set data.synthetic_size=32 --set data.synthetic_train=2048
         --set data.synthetic_test=512 --set teacher.source=train)
  TINY=(--preset tiny --pairs swin_tiny_patch4_window7_224:resnet18)
  HEAVY=(--preset paper --pairs mixer_b16_224:resnet18 --set recipe.batch_size=128 --set data.dataset=synthetic
         --set data.synthetic_classes=100 --set data.synthetic_size=32 --set teacher.source=train)
  DET=(--preset det-tiny --pairs swin_tiny_patch4_window7_224:resnet18 --set recipe.epochs=1
       --set data.train_limit=256 --set data.test_limit=64)
  OVER=(--preset paper --pair swin_tiny_patch4_window7_224:resnet18)
  DRY_STEPS=${KDBENCH_DRY_STEPS:-8}
fi

step() {    # step NAME LIMIT_S COMMAND...: run it, keep its output and log, record exit status and seconds
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout --signal=TERM --kill-after=20 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.log"
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$OUT/steps.jsonl"
  echo "gpu_check: $name exit $rc in $((SECONDS - start)) s" >&2
}

# Limits (s) keep the whole check under 10 minutes; a step cut short keeps its finished cells.
step probe 60 python "$HERE/gpu_check.py" probe "$OUT" "$DEVICE"
step plan 60 python -m kdbench plan "${PAPER[@]}" --distiller kd,ofa,pat,pat-faithful --seeds 1 --json-out "$OUT/plan.json"
step dry-eager 80 python -m kdbench run --dry-run --dry-steps "$DRY_STEPS" "${PAPER[@]}" --distiller kd,ofa,pat \
  --device "$DEVICE" --out "$OUT/dry-eager"
step dry-compile 150 python -m kdbench run --dry-run --dry-steps "$DRY_STEPS" "${PAPER[@]}" --distiller kd,ofa,pat \
  --set compile=true --device "$DEVICE" --out "$OUT/dry-compile"
step dry-fused 45 python -m kdbench run --dry-run --dry-steps "$DRY_STEPS" "${PAPER[@]}" --distiller pat \
  --set distiller.fused_teacher_passes=true --device "$DEVICE" --out "$OUT/dry-fused"
step faithful 90 python -m kdbench run --dry-run --dry-steps "$DRY_STEPS" "${PAPER[@]}" --distiller pat-faithful \
  --device "$DEVICE" --out "$OUT/dry-faithful"
step faithful-compile 120 python -m kdbench run --dry-run --dry-steps "$DRY_STEPS" "${PAPER[@]}" \
  --distiller pat-faithful --set compile=true --device "$DEVICE" --out "$OUT/dry-faithful-compile"
step heaviest 45 python -m kdbench run --dry-run --dry-steps 2 "${HEAVY[@]}" --distiller pat --device "$DEVICE" \
  --out "$OUT/dry-heaviest"
step overhead 45 python -m kdbench bench --overhead "${OVER[@]}" --distillers kd --steps 3 --rounds 2 \
  --device "$DEVICE" --json
step teach-twice 60 bash -c "python -m kdbench teach ${TINY[*]} --device $DEVICE --out $OUT/tiny \
  && python -m kdbench teach ${TINY[*]} --device $DEVICE --out $OUT/tiny"
step detection 60 python -m kdbench run "${DET[@]}" --distiller kd --seeds 1 --device "$DEVICE" --out "$OUT/detection"
step boxes 30 python "$HERE/gpu_check.py" boxes "$OUT" "$DEVICE"
step tiny 100 python -m kdbench run "${TINY[@]}" --distiller kd,pat --seeds 1 --device "$DEVICE" --out "$OUT/tiny"
python "$HERE/gpu_check.py" summary "$OUT"
