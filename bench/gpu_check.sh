#!/usr/bin/env bash
# The prepared GPU check (issue 5): benchmarks 2 and 3 at 224 px on one GPU, printing train
# images/s, scoring images/s through 20 detectors (decode included) and the efficiency ratios.
# Needs only PyTorch, torchvision, Pillow and numpy; finishes in a few minutes on one H100.
#
# Images: ../shared is not beside the checkout on a lent GPU machine, so first, here:
#   bash bench/prepare_gpu_data.sh          # copies 1,200 real VOC JPEGs into .bench-data/ (ignored)
# then run with .bench-data carried:  bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")"
VOC="${VOC_ROOT:-../../shared/voc2007/VOCdevkit/VOC2007}"
[ -d "$VOC/JPEGImages" ] || VOC=../.bench-data/VOC2007
[ -d "$VOC/JPEGImages" ] || { echo "no images: run bench/prepare_gpu_data.sh first (or set VOC_ROOT)"; exit 2; }
# Overrides for a smoke test on a CPU: DEVICE=cpu SIZE=32 BATCH=8 STEPS=2 IMAGES=32 bash bench/gpu_check.sh
DEVICE="${DEVICE:-cuda}" SIZE="${SIZE:-224}" BATCH="${BATCH:-256}" STEPS="${STEPS:-25}" IMAGES="${IMAGES:-1024}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== 2. training efficiency, $SIZE px"
timeout 300 "$PY" train_efficiency.py --voc-root "$VOC" --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --rounds 2 --device "$DEVICE"
echo "== 3. scoring through 20 detectors, $SIZE px"
timeout 200 "$PY" scoring.py --voc-root "$VOC" --size "$SIZE" --detectors 20 --images "$IMAGES" --batch "$BATCH" --plain-images 4 --device "$DEVICE"
