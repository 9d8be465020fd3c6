#!/usr/bin/env bash
# `make demo` on a GPU host, at the 224 px it picks there (issue 33: the demo's dog detector, AUC >= 0.75;
# SIZE=N names another): the product's
# own `make demo` recipe (its install step skipped: the wheels below), on the embedded default (SQLite,
# the in-process executor): submit (car and dog: a shared start with submit's defaults, then 1 epoch a
# class), run, the AP table, report; then status. Needs `make` (the host's, else .whl/bin/make). On the sample at 224 px
# (.bench-data/VOC2007-224, JPEG quality 85) with its usual hold-out.
#
# First, here:  Q224=1 bash bench/prepare_gpu_data.sh && bash bench/prepare_gpu_wheels.sh
# then, carrying .bench-data/VOC2007-224 and .whl:  bash bench/gpu_demo.sh   (about 3 minutes on an H200)
# Smoke test on a CPU (Python 3.11 here: the vocfleet wheel alone): WHEELS='.whl/vocfleet-*.whl' PYTHON=.venv/bin/python DEVICE_CHECK=0 SIZE=32 START_EPOCHS=1 EPOCHS=1 VOC_ROOT=../shared/voc2007/VOCdevkit/VOC2007 bash bench/gpu_demo.sh
set -uo pipefail
cd "$(dirname "$0")/.."
VOC="${VOC_ROOT:-.bench-data/VOC2007-224}"
[ -d "$VOC/JPEGImages" ] || { echo "no images at $VOC: run Q224=1 bench/prepare_gpu_data.sh first (or set VOC_ROOT)"; exit 2; }
VOC=$(cd "$VOC" && pwd)
ls .whl/vocfleet-*.whl > /dev/null 2>&1 || { echo "no wheels in .whl: run bench/prepare_gpu_wheels.sh first"; exit 2; }
SIZE="${SIZE:-}" CLASSES="${CLASSES:-car,dog}" START_EPOCHS="${START_EPOCHS:-}" EPOCHS="${EPOCHS:-}"
PY="${PYTHON:-python3}" OUTDIR="${OUT:-/tmp}"
export PYTHONUNBUFFERED=1 VOCFLEET_DATA_DIR="${VOCFLEET_DATA_DIR:-$(mktemp -d)}"
[ -w /dev/shm ] && export TMPDIR=/dev/shm
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  rm -rf /tmp/vocfleet-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/vocfleet-site ${WHEELS:-.whl/*.whl} || exit 1
  export PYTHONPATH=/tmp/vocfleet-site
  # The recipe asks $(BIN)/python which size this host gets: the host's python, with the wheels on PYTHONPATH.
  PYBIN=$("$PY" -c 'import sys; print(sys.executable)') && printf '#!/bin/sh\nexec "%s" "$@"\n' "$PYBIN" > /tmp/vocfleet-site/bin/python && chmod +x /tmp/vocfleet-site/bin/python || exit 1
  [ "${DEVICE_CHECK:-1}" = 0 ] || "$PY" -c 'import torch; assert torch.cuda.is_available(), "no GPU"; print(torch.cuda.get_device_name())' || exit 1
  command -v make > /dev/null || { echo "no make on this host: the one carried in .whl/bin"; PATH="$PWD/.whl/bin:$PATH"; }
  t0=$(date +%s)
  # The Makefile's own demo recipe, its install step taken as done (-o): the wheels' vocfleet in BIN.
  make -o install-run demo BIN=/tmp/vocfleet-site/bin VOC_ROOT="$VOC" SIZE="$SIZE" CLASSES="$CLASSES" \
    START_EPOCHS="$START_EPOCHS" EPOCHS="$EPOCHS" REPORT="$OUTDIR/gpu_demo-report.html" FORCE=1 &&
    /tmp/vocfleet-site/bin/vocfleet status
  echo "== exit $?; $(( $(date +%s) - t0 )) s; $(date -u)"
} 2>&1 | tee "$OUTDIR/gpu_demo.log"
