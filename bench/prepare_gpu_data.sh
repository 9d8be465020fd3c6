#!/usr/bin/env bash
# Copy a subset of the real VOC2007 sample into .bench-data/ (git-ignored) so it can travel to a
# GPU machine with the working tree (the device tool's 64 MiB limit: 1,200 JPEGs are about 43 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${VOC_ROOT:-../shared/voc2007/VOCdevkit/VOC2007}"
DST=.bench-data/VOC2007
mkdir -p "$DST/JPEGImages" "$DST/ImageSets/Main"
files=("$SRC"/JPEGImages/*.jpg)  # sorted by the shell
cp "${files[@]:0:${N:-1200}}" "$DST/JPEGImages/"
cp "$SRC"/ImageSets/Main/*.txt "$DST/ImageSets/Main/"
du -sh .bench-data
