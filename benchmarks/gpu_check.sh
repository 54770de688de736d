#!/usr/bin/env bash
# One prepared GPU check (a CUDA machine with no network): installs openmae from this working tree without
# dependencies (torch, timm, transformers must be there), then measures pretraining steps of ViT-B/16, ViT-L/16
# and ViT-H/14 (bf16, SDPA, fused AdamW; eager and compiled) beside the official-style fp16 + GradScaler eager
# step, Hugging Face at ViT-B/16, and the loader on real photos (CPU path, and decoding + augmentation on the
# GPU) when a photo folder is given.
# Sized to about 5 minutes on an H100. Results go to $OUT (or /tmp/gpu_check); the table is printed last.
#
#   bash benchmarks/gpu_check.sh [photo-folder]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT_DIR"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
python3 -c "import openmae, torch; print('openmae', openmae.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT_DIR/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$OUT_DIR/env.txt"
log="$OUT_DIR/throughput.log"
: > "$log"
bench() { timeout 150 python3 benchmarks/throughput.py --steps 8 --warmup 3 "$@" 2>&1 | tee -a "$log"; }
bench --preset mae_vit_base_patch16 --batch 256 --precision bf16
bench --preset mae_vit_base_patch16 --batch 256 --precision bf16 --compile --no-hf
bench --preset mae_vit_large_patch16 --batch 128 --precision bf16 --no-hf
bench --preset mae_vit_large_patch16 --batch 128 --precision bf16 --compile --no-hf
bench --preset mae_vit_huge_patch14 --batch 64 --precision bf16 --compile --no-hf
bench --preset mae_vit_large_patch16 --batch 128 --precision bf16 --no-hf --grad-checkpointing
if [ -n "${1:-}" ] && [ -d "$1" ]; then
  timeout 90 python3 benchmarks/loader.py --data "$1" --workers 4 15 --images 1000 2>&1 | tee "$OUT_DIR/loader.log"
  timeout 90 python3 benchmarks/loader.py --data "$1" --workers 4 15 --images 1000 --batch 256 --device-augment \
    --device cuda 2>&1 | tee -a "$OUT_DIR/loader.log"
fi
echo
echo "== summary =="
grep -E '^(mae_vit|\| )' "$log"
