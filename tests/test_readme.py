"""The README's Python API block runs as written (with this test's folders for its paths)."""

import re
import shutil
from pathlib import Path

from tests.support import make_fake_voc

ROOT = Path(__file__).resolve().parents[1]


def test_python_api_block_runs(tmp_path, capsys):
    fake_voc = make_fake_voc(tmp_path / "VOC2007", n=160)  # enough training images for the block's batch of 64
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"#+ Python API\n.*?```python\n(.*?)```", readme, re.S).group(1)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        shutil.copy(fake_voc / "JPEGImages" / name, photos / name)
    code = block.replace('"/data/VOCdevkit/VOC2007", "/data/photos"', f"{str(fake_voc)!r}, {str(photos)!r}")
    code = code.replace("image_size=64, epochs=2", "image_size=32, epochs=1")  # the same calls; two ResNet-50 fits at an eighth of the work
    assert code.count(repr(str(photos))) == 1 and "image_size=32, epochs=1" in code
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["1 succeeded", "2 succeeded", "succeeded"] and len(out) == 6
