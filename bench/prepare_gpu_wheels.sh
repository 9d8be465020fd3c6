#!/usr/bin/env bash
# Wheels for a lent GPU host (no network there), into .whl/ (git-ignored through .git/info/exclude):
# what the product's embedded path needs beyond the host's own packages (SQLAlchemy, Alembic, Mako;
# the host has torch, Pillow, OpenCV, click, jinja2 and the rest, not Celery, Redis or psycopg,
# which the embedded default does not import), and vocfleet itself as a wheel. About 6 MB; carry
# `.whl` and install there with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# (bench/gpu_demo.sh does). The host's Python is 3.12 on x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
sqlalchemy=$("$PY" -c 'import sqlalchemy; print(sqlalchemy.__version__)')
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "sqlalchemy==$sqlalchemy" "alembic==$("$PY" -c 'import alembic; print(alembic.__version__)')" mako
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
# GNU make, in case the host has none (its package notes list CMake and ninja, not make): gpu_demo.sh
# puts .whl/bin on PATH only where `make` is missing. It needs only the C library (x86-64 both sides).
mkdir -p .whl/bin && cp "$(command -v make)" .whl/bin/make
ls .whl; du -sh .whl
