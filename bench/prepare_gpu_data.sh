#!/usr/bin/env bash
# Copy real VOC2007 sample images into .bench-data/ (git-ignored) so they can travel to a GPU
# machine with the working tree (the device tool carries at most 64 MiB):
#   VOC2007/     the first 1,000 JPEGs, untouched (about 37 MB): benchmarks 2 and 3 decode these.
#   VOC2007-64/  every image of the sample as the 64 px training cache holds it, stored losslessly
#                as PNG under its usual .jpg name (Pillow reads by content; about 19 MB), so
#                bench/quality.py sees the same pixels there as here.
# With Q224=1, instead of VOC2007-64/ (about 60 MB: with the repository, 7 MB since its saved folds
# are gzipped, and the wheels, more than one call carries, so gpu_check.sh's call carries
# .bench-data/VOC2007 and the next .bench-data/VOC2007-224 and .whl):
#   VOC2007-224/ every image of the sample as the 224 px training cache holds it, saved as JPEG
#                quality 85 (about 33 MB; losslessly it would not travel): the GPU's 20-class
#                comparison at 224 px trains on these, the same pixels for every recipe; and the
#                first 600 JPEGs in VOC2007/ (about 21 MB) instead of 1,000.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${VOC_ROOT:-../shared/voc2007/VOCdevkit/VOC2007}"
PY="${PYTHON:-.venv/bin/python}"
Q224="${Q224:-0}"
sets=(VOC2007 VOC2007-64) cached=VOC2007-64
if [ "$Q224" = 1 ]; then sets=(VOC2007 VOC2007-224) cached=VOC2007-224 N="${N:-600}"; fi
rm -rf .bench-data
for d in "${sets[@]}"; do mkdir -p ".bench-data/$d/JPEGImages" ".bench-data/$d/ImageSets/Main"; cp "$SRC"/ImageSets/Main/*.txt ".bench-data/$d/ImageSets/Main/"; done
files=("$SRC"/JPEGImages/*.jpg)  # sorted by the shell
cp "${files[@]:0:${N:-1000}}" .bench-data/VOC2007/JPEGImages/
"$PY" - "$SRC" "$cached" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, ".")
from model.data import load_rgb

for path in sorted(Path(sys.argv[1], "JPEGImages").glob("*.jpg")):
    target = Path(".bench-data", sys.argv[2], "JPEGImages", path.name)
    if sys.argv[2] == "VOC2007-64":
        Image.fromarray(np.asarray(load_rgb(path, 64))).save(target, "PNG", optimize=True)
    else:
        load_rgb(path, 224).save(target, "JPEG", quality=85)
PY
du -sh .bench-data .bench-data/*
