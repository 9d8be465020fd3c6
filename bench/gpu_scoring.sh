#!/usr/bin/env bash
# Follow-up GPU check for scoring (issue 5): the scoring benchmark at 224 px with and without
# torch.compile, after scoring's decode step alone by thread count. About 2 minutes on an H100/H200.
# (bench/inference_variants.py: one detector's forward in each variant, run once on 2026-11-27.)
set -uo pipefail
cd "$(dirname "$0")"
VOC="${VOC_ROOT:-../../shared/voc2007/VOCdevkit/VOC2007}"
[ -d "$VOC/JPEGImages" ] || VOC=../.bench-data/VOC2007
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  date -u; nvidia-smi --query-gpu=name --format=csv,noheader
  echo "== decode alone, by thread count"
  timeout 60 "$PY" decode_threads.py --voc-root "$VOC"
  echo "== 3. scoring through 20 detectors, 224 px, eager and compiled"
  timeout 240 "$PY" scoring.py --voc-root "$VOC" --size 224 --detectors 20 --images 1000 --batch 256 --plain-images 2 --compile
} 2>&1 | tee "${OUT:-/tmp}/gpu_scoring.log"
