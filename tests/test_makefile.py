"""`make demo`'s own recipe, run by make with its install step taken as done and a `vocfleet` that records
what it is asked: the size it picks for this host, and the one a user names."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no make on this machine")


# A CUDA device of this many GiB, as torch would report it, for the recipe's own python (a sitecustomize).
FAKE_GPU = """import torch
class _Props:
    total_memory = {gib} << 30
torch.cuda.is_available = lambda: True
torch.cuda.get_device_properties = lambda index: _Props()
"""


def run_demo(tmp_path: Path, *args: str, gpu_gib: int | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir, voc, calls = tmp_path / "bin", tmp_path / "VOC2007", tmp_path / "calls"
    bin_dir.mkdir()
    (voc / "JPEGImages").mkdir(parents=True)
    (bin_dir / "vocfleet").write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # the test's own torch
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "MAKEFLAGS": ""}
    if gpu_gib is not None:
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(FAKE_GPU.format(gib=gpu_gib))
        env["PYTHONPATH"] = str(tmp_path / "site")
    cmd = [MAKE, "-s", "-C", str(ROOT), "-o", "install-run", "demo", f"BIN={bin_dir}", f"VOC_ROOT={voc}", f"REPORT={tmp_path / 'r.html'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    return done, calls.read_text().splitlines() if calls.exists() else []


def submitted_size(calls: list[str]) -> str:
    (submit,) = [c.split() for c in calls if c.startswith("submit ")]
    return submit[submit.index("--image-size") + 1]


def test_demo_picks_the_size_for_this_host(tmp_path):
    from vocfleet.model.engine import demo_image_size

    want = str(demo_image_size())
    done, calls = run_demo(tmp_path)
    assert done.returncode == 0, done.stderr
    assert submitted_size(calls) == want
    assert f"make demo: {want} px" in done.stdout
    assert [c.split()[0] for c in calls] == ["report", "submit", "run", "report"]


def test_demo_takes_the_size_it_is_given(tmp_path):
    done, calls = run_demo(tmp_path, "SIZE=96")
    assert done.returncode == 0, done.stderr
    assert submitted_size(calls) == "96"
    assert "px (a CUDA GPU" not in done.stdout


@pytest.mark.parametrize(("gib", "size"), [(16, "224"), (8, "224"), (4, "64")])
def test_demo_on_a_gpu_trains_at_224_px_where_it_fits(tmp_path, gib, size):
    done, calls = run_demo(tmp_path, gpu_gib=gib)
    assert done.returncode == 0, done.stderr
    assert submitted_size(calls) == size
