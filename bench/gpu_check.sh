#!/usr/bin/env bash
# The prepared GPU check (issue 5), one command on one GPU machine:
#   2. training efficiency at 224 px (train images/s, real / model-only),
#   3. scoring through 20 detectors at 224 px (images/s, decode included; eager and compiled, each
#      of its bound; JPEGs decoded by Pillow on the CPU and by nvJPEG on the GPU, target 0.9 of the
#      compiled bound), after scoring's decode step alone by thread count (bench/decode_threads.py)
#      and the check that GPU-decoded scores match Pillow's within 0.02 (bench/decode_match.py),
#   Q. detector quality, car at 64 px, 5 epochs, three recipes x five seeds (bench/quality.py),
#   2c. training efficiency again with torch.compile (last: it compiles for a minute or two).
# Needs only PyTorch, torchvision, Pillow, numpy, filelock and matplotlib; about 5 minutes on an H100.
#
# Images: ../shared is not beside the checkout on a lent GPU machine, so first, here:
#   bash bench/prepare_gpu_data.sh    # real VOC sample images into .bench-data/ (git-ignored)
# then run with .bench-data carried:  bash bench/gpu_check.sh
# Smoke test on a CPU: DEVICE=cpu SIZE=32 BATCH=8 STEPS=2 IMAGES=32 QSIZE=32 QEPOCHS=1 SEEDS=0 bash bench/gpu_check.sh
# SKIP="Q 2c" leaves out the steps so numbered (their numbers before the dot), to save a short lease for
# something else; the log says which were skipped.
set -uo pipefail
cd "$(dirname "$0")"
VOC="${VOC_ROOT:-../../shared/voc2007/VOCdevkit/VOC2007}"
[ -d "$VOC/JPEGImages" ] || VOC=../.bench-data/VOC2007
[ -d "$VOC/JPEGImages" ] || { echo "no images: run bench/prepare_gpu_data.sh first (or set VOC_ROOT)"; exit 2; }
QVOC="${QVOC_ROOT:-../.bench-data/VOC2007-64}"
[ -d "$QVOC/JPEGImages" ] || QVOC="$VOC"
DEVICE="${DEVICE:-cuda}" SIZE="${SIZE:-224}" BATCH="${BATCH:-256}" STEPS="${STEPS:-25}" IMAGES="${IMAGES:-1000}"
QSIZE="${QSIZE:-64}" QEPOCHS="${QEPOCHS:-5}" SEEDS="${SEEDS:-0 1 2 3 4}" SKIP="${SKIP:-}"
LOG="${OUT:-/tmp}/gpu_check.log"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
failed=() skipped=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going if it fails
  local name=$1 limit=$2; shift 2
  if [[ " $SKIP " == *" ${name%%.*} "* ]]; then skipped+=("${name%%.*}"); return; fi
  echo "== $name"
  timeout "$limit" "$@" || { echo "!! $name failed or ran out of time (exit $?)"; failed+=("$name"); }
}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
  "$PY" -c 'import torch, torchvision, PIL; print("torch", torch.__version__, "torchvision", torchvision.__version__, "Pillow", PIL.__version__)'
  step "2. training efficiency, $SIZE px" 150 "$PY" train_efficiency.py --voc-root "$VOC" --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --rounds 2 --device "$DEVICE"
  step "3a. scoring's decode step alone, $SIZE px" 60 "$PY" decode_threads.py --voc-root "$VOC" --size "$SIZE" --images "$IMAGES" --threads 1 4 8 16
  step "3d. GPU JPEG decoding vs Pillow, 64 and $SIZE px" 90 "$PY" decode_match.py --voc-root "$VOC" --images "$IMAGES" --sizes 64 "$SIZE" --device "$DEVICE"
  step "3. scoring through 20 detectors, $SIZE px" 150 "$PY" scoring.py --voc-root "$VOC" --size "$SIZE" --detectors 20 --images "$IMAGES" --batch "$BATCH" --plain-images 4 --device "$DEVICE" --compile
  # shellcheck disable=SC2086
  step "Q. quality, car, $QSIZE px, $QEPOCHS epochs, seeds $SEEDS" 160 "$PY" quality.py --voc-root "$QVOC" --size "$QSIZE" --epochs "$QEPOCHS" --seeds $SEEDS --device "$DEVICE"
  step "2c. training efficiency with torch.compile, $SIZE px" 110 "$PY" train_efficiency.py --voc-root "$VOC" --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --rounds 1 --device "$DEVICE" --compile
  echo "== done; failed: ${failed[*]:-none}; skipped: ${skipped[*]:-none}"
} 2>&1 | tee "$LOG"
grep -q "failed: none" "$LOG"
