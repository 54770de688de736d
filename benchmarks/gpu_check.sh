#!/usr/bin/env bash
# One prepared GPU check (a CUDA machine with no network): installs openmae from this working tree without
# dependencies (torch, timm, transformers must be there), then measures, most important first:
#   B       ViT-B/16 pretraining step: openmae bf16 (SDPA, fused AdamW) compiled and eager, Hugging Face (SDPA, bf16)
#           and the official-style fp16 + GradScaler eager step, in one run (the ratios)
#   loader  the loader on real photos: the CPU path (15 workers) and GPU decoding + augmentation (4 and 15 workers)
#   L, H    ViT-L/16 and ViT-H/14: openmae compiled block by block and eager beside the official-style fp16 step;
#           ViT-L/16 eager with activation checkpointing too (peak memory per image with and without it)
# (the default), and on request: whole (L and H compiled as a whole, their best setting), graphs (B and L compiled
# and replayed as CUDA graphs), big (twice the batches), prof (where ViT-B/16's step goes; profl: ViT-L/16's compiled
# step without and with CUDA graphs), loadab (the loader's
# alternatives), bands (13-band arrays made from the photos: the loader's CPU path and device path).
# and prints the tables last. The whole script stops by BUDGET_S seconds (default 290, install included): each
# row runs under a time limit cut to what is left, a row that needs more than is left is skipped, and timing.log
# and the summary say which rows ran, timed out or were skipped. Rows skipped for time run in a second call with
# PARTS. Timing on an H200 (2026-12-04, cold compiler cache): install 22 s, B 94, the loader rows 19 and 14, L 59,
# H 59 (each row's NEEDS_S below is these); on an H100 (2026-11-26) L and H compiled whole with their reference rows
# took ~105 s each. On a CPU, compiling ViT-B/16 whole took twice as long as block by block.
#
#   bash benchmarks/gpu_check.sh [photo-folder]
#   PARTS="L H" bash benchmarks/gpu_check.sh                  # only some parts (default: B loader L H)
#   PARTS="whole prof" bash benchmarks/gpu_check.sh           # the second call: best settings, and the profile
#   PLAN=1 bash benchmarks/gpu_check.sh photos                # print the rows and their limits, run nothing
#   PARTS="prof" bash benchmarks/gpu_check.sh                 # where ViT-B/16's step goes (kernels, GPU idle time)
#   PARTS="profl" bash benchmarks/gpu_check.sh                # ViT-L/16 compiled: GPU idle time without/with CUDA graphs
#   PARTS="big" bash benchmarks/gpu_check.sh                  # B, L, H at twice the batches above (MFU vs batch)
#   PARTS="loadab" bash benchmarks/gpu_check.sh photos        # receiving/resizing costs; the resize per crop;
#                                                             # workers decoding; no decoding ahead; epoch boundaries
#   PARTS="bands" bash benchmarks/gpu_check.sh photos         # multi-band arrays (data.format=array) in the loader
#   PARTS="knn" bash benchmarks/gpu_check.sh                  # the kNN's neighbour search at ImageNet's scale, GPU vs CPU
#   PARTS="dist" bash benchmarks/gpu_check.sh                 # the patch-distance search (1,000 reference images of
#                                                             # ViT-B/16, its coreset) on the GPU, checked on the CPU
#   PARTS="codec" bash benchmarks/gpu_check.sh photos         # TorchCodec's nvJPEG decode against torchvision's
#                                                             # (a torchcodec wheel in runs/wheels is installed first)
#   BUDGET_S=580 PARTS="B L H whole" bash benchmarks/gpu_check.sh # a longer budget
# Results go to $OUT (or /tmp/gpu_check).
# The photo folder, from a machine that has the datasets (every fourth ImageNet-sample photo: 27 MB, in an ignored
# folder that can travel with the working tree to a machine without them):
#   mkdir -p runs/gpu_photos && ls ../shared/datasets/imagenet-sample/*.JPEG | awk 'NR % 4 == 1' | xargs cp -t runs/gpu_photos
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/gpu_check}"
BUDGET_S="${BUDGET_S:-290}"
PLAN="${PLAN:-}"
PARTS=" ${PARTS:-B loader L H} "
PHOTOS="${1:-}"
mkdir -p "$OUT_DIR"
timing="$OUT_DIR/timing.log"
: > "$timing"
for f in throughput.log loader.log profile.log knn.log distance.log; do rm -f "$OUT_DIR/$f"; done
export PYTHONUNBUFFERED=1

# row PART LIMIT_S NEEDS_S LOG COMMAND...: run COMMAND when PART is asked for and at least NEEDS_S seconds of the
# budget are left, for at most LIMIT_S seconds (or what is left); its output goes to $OUT_DIR/LOG. NEEDS_S is what
# the row is expected to take with a cold compiler cache (measured on an H200 where a row ran there, else a guess). With PLAN set, print the row
# instead and count NEEDS_S as spent (the expected schedule).
row() {
  local part=$1 limit=$2 needs=$3 log=$4
  shift 4
  [[ "$PARTS" == *" $part "* ]] || return 0
  local left=$((BUDGET_S - SECONDS - 5)) # 5 s for the summary
  if ((left < needs)); then
    echo "## skipped: ${left} s of the budget left, the row needs ${needs}: part $part: $*" | tee -a "$timing"
    return 0
  fi
  local t=$((limit < left ? limit : left))
  echo "## part $part at ${SECONDS} s, at most ${t} s: $*" >> "$timing"
  if [ -n "$PLAN" ]; then
    echo "plan: part $part at ${SECONDS} s, needs ${needs} s, at most ${t} s: $*"
    SECONDS=$((SECONDS + needs))
    return 0
  fi
  echo "## $*" >> "$OUT_DIR/$log"
  timeout "$t" "$@" 2>&1 | tee -a "$OUT_DIR/$log"
  local rc=${PIPESTATUS[0]}
  if ((rc == 124)); then
    echo "## timed out after ${t} s: part $part: $*" | tee -a "$timing"
  elif ((rc != 0)); then
    echo "## failed (exit ${rc}): part $part: $*" | tee -a "$timing"
  fi
  return 0
}

if [ -z "$PLAN" ]; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
  python3 -c "import openmae, torch, timm; print('openmae', openmae.__version__, 'torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" \
    | tee "$OUT_DIR/env.txt"
  python3 -c "import transformers; print('transformers', transformers.__version__)" 2>&1 | tail -1 | tee -a "$OUT_DIR/env.txt"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$OUT_DIR/env.txt"
  echo "## install and environment done at ${SECONDS} s" >> "$timing"
else
  SECONDS=22 # what the install and environment lines took on the H200
fi

step=(python3 benchmarks/throughput.py --steps 8 --warmup 3 --precision bf16)
loader=(python3 benchmarks/loader.py --data "$PHOTOS" --repeat 40 --batch 256)
# --repeat 40: about ten thousand images a row (250 photos), so that worker start-up does not dominate
if [ -n "$PHOTOS" ] && [ -d "$PHOTOS" ]; then have_photos=1; else have_photos=; fi
photos_row() { # as row, for the rows that read the photo folder
  if [ -n "$have_photos" ]; then row "$@"; elif [[ "$PARTS" == *" $1 "* ]] && [[ "$NO_PHOTOS_SAID" != *" $1 "* ]]; then
    NO_PHOTOS_SAID+=" $1 "
    echo "## skipped: no photo folder given (or '$PHOTOS' is not one): part $1" | tee -a "$timing"
  fi
}
NO_PHOTOS_SAID=" "

# Batches fill a good part of an 80 GB card (2026-11-26 on an H100: B 53, L 91, H 201 MiB per image).
# The ratios of the issue, each measured in one run: openmae compiled and eager vs Hugging Face vs the official style.
row B 120 95 throughput.log "${step[@]}" --preset mae_vit_base_patch16 --batch 256 --compile --with-eager
# the CPU path (PIL decode, torchvision crop/resize) and the GPU path (nvJPEG decode, resize/flip/normalise on the
# GPU); the rows split the training process's time: waiting for the workers vs the device stage
photos_row loader 45 20 loader.log "${loader[@]}" --workers 15
photos_row loader 60 15 loader.log "${loader[@]}" --workers 4 15 --device-augment --device cuda
# L and H compiled block by block (the identical blocks share one graph: compiling takes a fraction of the whole
# model's time, so that all parts fit the budget); part "whole" compiles them whole, the best setting (the MFU targets).
# ViT-L/16's run has the eager step with activation checkpointing as one more row (memory per image without and with
# it, in one process: two processes of their own took 42 s on the H200)
row L 90 65 throughput.log "${step[@]}" --preset mae_vit_large_patch16 --batch 256 --compile blocks --with-eager --no-hf \
  --with-checkpointing
row H 100 60 throughput.log "${step[@]}" --preset mae_vit_huge_patch14 --batch 128 --compile blocks --with-eager --no-hf
row whole 130 90 throughput.log "${step[@]}" --preset mae_vit_large_patch16 --batch 256 --compile --no-hf
row whole 150 100 throughput.log "${step[@]}" --preset mae_vit_huge_patch14 --batch 128 --compile --no-hf
# CUDA graphs: the compiled step replayed as graphs (torch.compile mode reduce-overhead; the step has static shapes),
# for how much of the step is the host launching kernels (compare with B and whole)
row graphs 130 80 throughput.log "${step[@]}" --preset mae_vit_base_patch16 --batch 256 --compile --compile-mode reduce-overhead --no-hf --no-reference
row graphs 150 100 throughput.log "${step[@]}" --preset mae_vit_large_patch16 --batch 256 --compile --compile-mode reduce-overhead --no-hf --no-reference
# MFU against batch: twice the batches above, openmae alone (fits a card of 80 GB: about 27, 46 and 51 GB)
row big 120 70 throughput.log "${step[@]}" --preset mae_vit_base_patch16 --batch 512 --compile --no-hf --no-reference
row big 130 90 throughput.log "${step[@]}" --preset mae_vit_large_patch16 --batch 512 --compile --no-hf --no-reference
row big 150 100 throughput.log "${step[@]}" --preset mae_vit_huge_patch14 --batch 256 --compile --no-hf --no-reference
# where the step's time goes: kernel time by kind and the GPU's idle share, eager and compiled (ViT-B/16, batch 256)
prof=(python3 benchmarks/profile_step.py --preset mae_vit_base_patch16 --batch 256 --precision bf16)
row prof 60 30 profile.log "${prof[@]}"
row prof 120 70 profile.log "${prof[@]}" --compile
# ViT-L/16 compiled whole, as kernels launched one by one and replayed as CUDA graphs (the graphs gave it 14% on the
# H200, ViT-B/16 2%): how long the GPU sits idle between kernels in each
profl=(python3 benchmarks/profile_step.py --preset mae_vit_large_patch16 --batch 256 --precision bf16 --compile)
row profl 150 90 profile.log "${profl[@]}"
row profl 150 90 profile.log "${profl[@]}" --compile-mode reduce-overhead
# the loader's alternatives: the training process's CPU time for a batch of 256 photos (receiving it as pickled
# arrays vs one shared buffer; dispatching its resize per crop vs batched); the device stage's profile; its resize
# crop by crop; the workers decoding (data.device_decode=false: GPUs without a hardware JPEG decoder); the device
# stage in line instead of a batch ahead in a thread (data.device_ahead=false); epoch boundaries (wait for each
# epoch's first batch, a new iterator per epoch vs one for the run; 60 ms steps as ViT-B/16 at batch 256, 2 s of
# pictures and checkpoint at each epoch's end)
photos_row loadab 40 20 loader.log python3 benchmarks/device_stage.py --data "$PHOTOS" --repeats 10 --rounds 1
photos_row loadab 60 25 loader.log "${loader[@]}" --workers 15 --device-augment --device cuda --profile 4
photos_row loadab 60 25 loader.log "${loader[@]}" --workers 15 --device-augment --device cuda --resize per-image --profile 4
photos_row loadab 60 25 loader.log "${loader[@]}" --workers 15 --device-augment --worker-decode --device cuda
photos_row loadab 60 25 loader.log "${loader[@]}" --workers 15 --device-augment --device cuda --no-ahead
photos_row loadab 60 30 loader.log python3 benchmarks/loader.py --data "$PHOTOS" --workers 15 --epochs 4 --repeat 4 \
  --batch 256 --step-ms 60 --pause-ms 2000
# multi-band arrays (data.format=array): 128 tiles of 13 uint16 bands at 256x256 made from the photos (outside $OUT,
# which comes back: 209 MB), then the loader's CPU path and its device path (workers cut out crops, the GPU resizes)
TILES=/tmp/openmae_band_tiles
bands=(python3 benchmarks/loader.py --data "$TILES" --format array --bands 13 --images 128 --repeat 40 --batch 256)
photos_row bands 60 20 bands.log python3 benchmarks/make_band_tiles.py --data "$PHOTOS" --out "$TILES" --count 128 \
  --bands 13 --size 256
photos_row bands 60 25 loader.log "${bands[@]}" --workers 15
photos_row bands 60 25 loader.log "${bands[@]}" --workers 15 --device-augment --device cuda

# TorchCodec's batched decode_jpeg (data.jpeg_decoder=torchcodec; torchvision deprecates its own since 0.29): a batch
# of 256 photos decoded by each (time, equal pixels), then the GPU loader path with it. The machine has no network:
# the carried wheels in runs/wheels are tried newest first until one imports with the machine's Python and torch
# (TorchCodec is built for one torch: 0.11 for torch 2.11, 0.16 for 2.14; the H200 of 2026-12-04 had Python 3.12
# and torch 2.11, this machine 3.11 and 2.14), e.g.
#   for v in 3.11 3.12; do pip download --no-deps --only-binary=:all: --python-version $v 'torchcodec>=0.11,<0.12' \
#     -d runs/wheels; done   # and the same for 'torchcodec>=0.16,<0.17'
if [ -z "$PLAN" ] && [[ "$PARTS" == *" codec "* ]] && ! python3 -c "import torchcodec.decoders" 2>/dev/null; then
  for wheel in $(ls -r runs/wheels/torchcodec-*.whl 2>/dev/null); do
    python3 -m pip install -q --no-deps --force-reinstall "$wheel" >/dev/null 2>&1 || continue
    python3 -c "from torchcodec.decoders import decode_jpeg" >/dev/null 2>&1 && echo "## installed $wheel" >> "$timing" \
      && break
    python3 -m pip uninstall -q -y torchcodec >/dev/null 2>&1
  done
  python3 -c "import torchcodec.decoders" 2>/dev/null \
    || echo "## torchcodec is not installed: no wheel in runs/wheels imports with $(python3 -V)" | tee -a "$timing"
fi
photos_row codec 40 15 codec.log python3 benchmarks/jpeg_decoders.py --data "$PHOTOS" --images 256 --device cuda
photos_row codec 60 25 loader.log "${loader[@]}" --workers 15 --device-augment --device cuda --jpeg-decoder torchcodec

# the kNN's neighbour search at ImageNet's scale (1,281,167 random training features of width 768, k 20): all 50,000
# validation features on the GPU, and 1,024 of them on the CPU (openmae knn before the search moved to the device)
row knn 60 20 knn.log python3 benchmarks/knn_search.py --device cuda --queries 50000
row knn 90 40 knn.log python3 benchmarks/knn_search.py --device cpu --queries 1024

# the patch-distance search of evaluate.reference_images / visualize --distances at ImageNet's scale: 1,000 reference
# images' 196,000 ViT-B/16 tokens, a coreset of a tenth, 1,000 query images, on the GPU; 4 of them again on the CPU
row dist 90 40 distance.log python3 benchmarks/distance_search.py --device cuda

echo "## all rows done at ${SECONDS} s (budget ${BUDGET_S} s)" >> "$timing"
[ -n "$PLAN" ] && exit 0
echo
echo "== summary =="
cat "$timing"
[ -f "$OUT_DIR/throughput.log" ] && grep -E '^(mae_vit|\| |## )' "$OUT_DIR/throughput.log"
[ -f "$OUT_DIR/loader.log" ] && grep -E '^(\{"workers|\{"part|operators called|Self CPU time total|Self CUDA time total)' "$OUT_DIR/loader.log"
[ -f "$OUT_DIR/codec.log" ] && grep -E '^\{' "$OUT_DIR/codec.log"
[ -f "$OUT_DIR/knn.log" ] && grep -E '^\{' "$OUT_DIR/knn.log"
[ -f "$OUT_DIR/distance.log" ] && grep -E '^\{' "$OUT_DIR/distance.log"
[ -f "$OUT_DIR/profile.log" ] && grep -E '^(mae_vit|profiled|\| (kind|matmul|attention|copies|optimizer|element-wise)[ ,]|GPU idle)' "$OUT_DIR/profile.log"
exit 0
