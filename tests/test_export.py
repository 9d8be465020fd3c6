"""vocfleet export: a detector as one TorchScript or ONNX file, run by a fresh interpreter that never imports vocfleet."""

import json
import subprocess
import sys

import pytest

from tests.support import SHARED_VOC

CONSUMER = r"""
import json, sys
import numpy as np
from PIL import Image, ImageOps

fmt, path, *images = sys.argv[1:]
if fmt == "torchscript":
    import torch
    extra = {"vocfleet.json": ""}
    model = torch.jit.load(path, _extra_files=extra)
    meta = json.loads(extra["vocfleet.json"])
else:
    import onnx, onnxruntime
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    meta["image_size"], meta["threshold"] = int(meta["image_size"]), float(meta["threshold"])
    session = onnxruntime.InferenceSession(path)
size = meta["image_size"]

def load(p):  # as the metadata's "preprocessing" says
    im = Image.open(p)
    if im.format in ("JPEG", "MPO"):
        im.draft("RGB", (2 * size, 2 * size))
    im = ImageOps.exif_transpose(im).convert("RGB")
    return np.asarray(im.resize((size, size), Image.BILINEAR, reducing_gap=2.0))

batch = np.stack([load(p) for p in images])
if fmt == "torchscript":
    probs = model(torch.from_numpy(batch)).tolist()
else:
    probs = session.run(["probability"], {"images": batch})[0].tolist()
print(json.dumps({"probs": probs, "meta": meta, "vocfleet_imported": any(m.startswith("vocfleet") for m in sys.modules)}))
"""


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_detector_matches_predict_without_vocfleet(detectors, tmp_path, invoke, fmt):
    images = sorted((SHARED_VOC / "JPEGImages").glob("*.jpg"))[:6] if SHARED_VOC.is_dir() else []
    if not images:
        pytest.skip("the shared VOC sample is not here")
    predicted = json.loads(invoke("predict", *images, "--classes", "dog", "--format", "json").output)
    want = {r["image"]: r["probability"] for r in predicted}
    out = tmp_path / f"dog.{'pt' if fmt == 'torchscript' else 'onnx'}"
    res = invoke("export", 2, "--format", fmt, "--out", out)
    assert res.exit_code == 0 and res.output.startswith(f"wrote {out}: {fmt}, dog detector 2"), res.output
    run = subprocess.run([sys.executable, "-c", CONSUMER, fmt, str(out), *map(str, images)], capture_output=True, text=True, check=True)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["vocfleet_imported"] is False
    assert got["meta"]["class"] == "dog" and got["meta"]["image_size"] == 48
    assert got["meta"]["threshold"] == pytest.approx(detectors["dog"].threshold)
    assert "reducing_gap=2.0" in got["meta"]["preprocessing"]
    assert got["probs"] == pytest.approx([want[str(p)] for p in images], abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary or ".data" file beside it
    res = invoke("export", 2, "--format", fmt, "--out", out)
    assert res.exit_code == 2 and "the file exists; pass --force" in res.output
    assert invoke("export", 2, "--format", fmt, "--out", out, "--force").exit_code == 0


def test_export_refuses_what_it_cannot_do(detectors, tmp_path, invoke):
    res = invoke("export", 99, "--out", tmp_path / "x.pt")
    assert res.exit_code == 2 and "no detector 99" in res.output
    res = invoke("export", 1, "--format", "tflite", "--out", tmp_path / "x.pt")
    assert res.exit_code == 2 and "tflite" in res.output
    assert not (tmp_path / "x.pt").exists()


def test_export_never_overwrites_a_detector_or_writes_where_it_cannot(detectors, data_dir, tmp_path, invoke):
    from vocfleet.db.settings import get_settings
    from vocfleet.model.artifacts import ArtifactStore

    inside = ArtifactStore.from_settings(get_settings()).job_dir("k") / "detector.pt"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"a detector")
    for out, says in [
        (inside, "where vocfleet keeps its own files"),
        (data_dir / "x.pt", "where vocfleet keeps its own files"),
        ("", "name the file to write"),
        (tmp_path, "is a folder"),
        ("/proc/x.pt", "cannot write in /proc"),
    ]:
        res = invoke("export", 1, "--out", out, "--force")
        assert res.exit_code == 2, (out, res.output)
        [line] = res.output.splitlines()
        assert line.startswith("vocfleet: error: --out ") and says in line, line
    assert inside.read_bytes() == b"a detector" and not list(tmp_path.glob(".*"))
