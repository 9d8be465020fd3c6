#!/usr/bin/env bash
# Copy a subset of the real VOC2007 sample into .bench-data/ (git-ignored) so it can travel to a
# GPU machine with the working tree (the device tool's 64 MiB limit: 1,200 JPEGs are about 43 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${VOC_ROOT:-../shared/voc2007/VOCdevkit/VOC2007}"
DST=.bench-data/VOC2007
mkdir -p "$DST/JPEGImages" "$DST/ImageSets/Main"
ls "$SRC/JPEGImages" | sort | head -"${N:-1200}" | while read -r f; do cp "$SRC/JPEGImages/$f" "$DST/JPEGImages/"; done
cp "$SRC"/ImageSets/Main/*.txt "$DST/ImageSets/Main/"
du -sh .bench-data
