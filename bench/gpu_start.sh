#!/usr/bin/env bash
# The GPU's shared-start comparison (issue 33): the 20 VOC classes at 224 px, today's independent
# fits (EPOCHS each, 10: the figure of 2026-11-30) against one shared start (START_EPOCHS) plus
# FINETUNE epochs per class, at the same fleet compute (20 x EPOCHS = START_EPOCHS + 20 x FINETUNE),
# on the folds FOLDS (by image) of the sample, through the product's fit_start and fit
# (bench/shared_start.py). About 5 minutes a fold on an H200; the log says the ratio of compute.
# SPLIT=1 (the default) runs the independent fits and the shared start side by side, two processes on
# the one GPU, and joins their folds at the end (compute is counted in pictures, so sharing the GPU
# changes the times only); SPLIT=0 runs both in one process. FINETUNE_LRS: 2e-4 (the CPU's choice).
#
# Images: the sample at 224 px travels as JPEG, first, here:
#   Q224=1 bash bench/prepare_gpu_data.sh     # .bench-data/VOC2007-224 (git-ignored)
# then, with .bench-data carried:  BUDGET=400 bash bench/gpu_start.sh
# Smoke test on a CPU: DEVICE=cpu SIZE=32 ARCH=tiny CLASSES=car,dog EPOCHS=2 START_EPOCHS=2 FINETUNE=1 FOLDS="0 1" MAX_BATCHES=2 VOC_ROOT=../../shared/voc2007/VOCdevkit/VOC2007 bash bench/gpu_start.sh
set -uo pipefail
cd "$(dirname "$0")"
VOC="${VOC_ROOT:-../.bench-data/VOC2007-224}"
[ -d "$VOC/JPEGImages" ] || { echo "no images at $VOC: run Q224=1 bench/prepare_gpu_data.sh first (or set VOC_ROOT)"; exit 2; }
DEVICE="${DEVICE:-cuda}" SIZE="${SIZE:-224}" EPOCHS="${EPOCHS:-10}" START_EPOCHS="${START_EPOCHS:-180}" FINETUNE="${FINETUNE:-1}"
FOLDS="${FOLDS:-0}" BUDGET="${BUDGET:-400}" CLASSES="${CLASSES:-all}" ARCH="${ARCH:-resnet50}" MAX_BATCHES="${MAX_BATCHES:-}"
SPLIT="${SPLIT:-1}"
START_SET="${START_SET-augment_policy=strong}"  # the start's settings as submit's default makes it (START_SET= for the origin's augmentation)
LOG="${OUT:-/tmp}/gpu_start.log"
export PYTHONUNBUFFERED=1
[ -w /dev/shm ] && export TMPDIR=/dev/shm  # each fit's checkpoints, in memory where it can
run() {  # run NAME ARGS...: one shared_start.py over the folds, saved to $OUT/NAME (a fold after every class)
  local name=$1; shift
  # shellcheck disable=SC2086
  timeout "$BUDGET" "${PYTHON:-python3}" shared_start.py --voc-root "$VOC" --classes "$CLASSES" --size "$SIZE" --epochs "$EPOCHS" \
    --start-epochs "$START_EPOCHS" --finetune-epochs "$FINETUNE" --finetune-lrs ${FINETUNE_LRS:-2e-4} --only-folds $FOLDS --device "$DEVICE" \
    --arch "$ARCH" --save "${OUT:-/tmp}/$name" ${MAX_BATCHES:+--max-batches $MAX_BATCHES} ${START_SET:+--start-set $START_SET} "$@"
  echo "== $name: exit $?; $(date -u)"
}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if [ "$SPLIT" = 1 ]; then
    # The independent fits and the start (+ its fine-tunes) as two processes at once on the one GPU (one
    # batch-64 fit leaves most of it idle); each keeps the classes it finished if BUDGET stops it.
    run gpu_start-independent --skip-start > "${OUT:-/tmp}/gpu_start-independent.log" 2>&1 &
    run gpu_start-shared --skip-independent
    wait
    echo "== the independent fits' log:"; cat "${OUT:-/tmp}/gpu_start-independent.log"
    "${PYTHON:-python3}" shared_start.py --combine "${OUT:-/tmp}"/gpu_start-{independent,shared}/fold*.json.gz
  else
    run gpu_start-folds
  fi
} 2>&1 | tee "$LOG"
