#!/usr/bin/env bash
# The GPU's 20-class comparison (issue 26): the origin's recipe ported plainly against vocfleet's
# default, every VOC class (car and dog first), 224 px, seeds SEEDS (0 unless set), the sample's 25% hold-out, through
# the product's own training (bench/quality.py), WORKERS fits at a time on the one GPU.
# It ends within BUDGET seconds: no fit starts after BUDGET - FIT (FIT: the longest a fit is
# expected to take), and the table covers the classes both recipes finished.
#
# Images: the sample at 224 px travels as JPEG, first, here:
#   Q224=1 bash bench/prepare_gpu_data.sh     # .bench-data/VOC2007-224 (git-ignored)
# then, with .bench-data carried:  BUDGET=300 bash bench/gpu_quality.sh
# Smoke test on a CPU: DEVICE=cpu SIZE=32 EPOCHS=1 WORKERS=2 CLASSES=car,dog BUDGET=600 bash bench/gpu_quality.sh
set -uo pipefail
cd "$(dirname "$0")"
VOC="${VOC_ROOT:-../.bench-data/VOC2007-224}"
[ -d "$VOC/JPEGImages" ] || { echo "no images at $VOC: run Q224=1 bench/prepare_gpu_data.sh first (or set VOC_ROOT)"; exit 2; }
DEVICE="${DEVICE:-cuda}" SIZE="${SIZE:-224}" EPOCHS="${EPOCHS:-10}" WORKERS="${WORKERS:-4}" BUDGET="${BUDGET:-600}" FIT="${FIT:-60}" SEEDS="${SEEDS:-0}"
CLASSES="${CLASSES:-car,dog,aeroplane,bicycle,bird,boat,bottle,bus,cat,chair,cow,diningtable,horse,motorbike,person,pottedplant,sheep,sofa,train,tvmonitor}"
LOG="${OUT:-/tmp}/gpu_quality.log"
export PYTHONUNBUFFERED=1
# Each fit writes its checkpoints every epoch (at 224 px over half a gigabyte): in memory where it can.
[ -w /dev/shm ] && export TMPDIR=/dev/shm
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # shellcheck disable=SC2086
  timeout "$BUDGET" "${PYTHON:-python3}" quality.py --voc-root "$VOC" --classes "$CLASSES" --size "$SIZE" --epochs "$EPOCHS" --batch 64 --seeds $SEEDS \
    --only origin "vocfleet default" --workers "$WORKERS" --time-limit $((BUDGET - FIT)) --device "$DEVICE"
  echo "== exit $?; $(date -u)"
} 2>&1 | tee "$LOG"
