"""No file can stop a run or be read where it should not: links swapped in after the scan, pipes, odd formats."""

import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from vocfleet.model.decode import BadImage, decode_file
from vocfleet.model.scan import FileEntry, iter_scan


def picture(path, colour=(200, 30, 30), size=(48, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path, quality=90)
    return path


@pytest.fixture(params=["openat2", "component walk"])
def scanned(tmp_path, request, monkeypatch):
    """``pics/`` with ``sub/x.jpg`` and a link ``inner.jpg`` to ``sub/x.jpg``, scanned; a secret picture outside it.

    Each test runs twice: reads through ``openat2`` (one system call), and through the walk from ``/``
    that kernels without it get.
    """
    from vocfleet.model import scan

    if request.param == "openat2":
        probe = scan._openat2("/", os.O_RDONLY | os.O_DIRECTORY)
        if probe is None:
            pytest.skip("this kernel has no openat2")
        os.close(probe)
    else:
        monkeypatch.setattr(scan, "_openat2_works", False)
    top = tmp_path / "pics"
    picture(top / "sub" / "x.jpg")
    (top / "inner.jpg").symlink_to(top / "sub" / "x.jpg")
    picture(tmp_path / "secret" / "x.jpg", colour=(0, 0, 255))
    entries = {e.entry.rel_path: e for e in iter_scan([top])}
    assert all(e.reason is None for e in entries.values()) and set(entries) == {"inner.jpg", "sub/x.jpg"}
    return tmp_path, top, entries


def test_a_link_inside_the_folder_is_read(scanned):
    _, _, entries = scanned
    assert decode_file(entries["inner.jpg"].entry, [32]).sha256 == decode_file(entries["sub/x.jpg"].entry, [32]).sha256


def test_a_relative_folder_is_refused_not_read_from_elsewhere(scanned, monkeypatch):
    tmp, _, _ = scanned
    monkeypatch.chdir(tmp)  # "pics" names the folder from here; read from / it names another
    with pytest.raises(ValueError, match="absolute folder, not 'pics'"):
        decode_file(FileEntry("pics", "sub/x.jpg"), [32])


def test_a_folder_swapped_for_a_link_after_the_scan_is_not_followed(scanned):
    tmp, top, entries = scanned
    (top / "sub").rename(top / "sub.old")
    (top / "sub").symlink_to(tmp / "secret")  # the attacker's swap, between scan and read
    with pytest.raises(BadImage, match=r"link leads outside the folder \(to .*secret/x.jpg\)"):
        decode_file(entries["sub/x.jpg"].entry, [32])


def test_the_scanned_folder_itself_swapped_for_a_link_is_not_followed(scanned):
    tmp, top, entries = scanned
    top.rename(tmp / "pics.old")
    os.symlink(tmp / "secret", top)  # /pics -> /secret: every path under it now leads out
    (tmp / "secret" / "sub").mkdir()
    picture(tmp / "secret" / "sub" / "x.jpg", colour=(0, 0, 255))
    with pytest.raises(BadImage, match="link leads outside the folder"):
        decode_file(entries["sub/x.jpg"].entry, [32])


def test_a_link_swapped_in_for_the_file_is_not_followed(scanned):
    tmp, top, entries = scanned
    (top / "sub" / "x.jpg").unlink()
    (top / "sub" / "x.jpg").symlink_to(tmp / "secret" / "x.jpg")
    with pytest.raises(BadImage, match="link leads outside the folder"):
        decode_file(entries["sub/x.jpg"].entry, [32])


@pytest.mark.timeout(20)
def test_a_pipe_swapped_in_is_refused_without_hanging(scanned):
    _, top, entries = scanned
    (top / "sub" / "x.jpg").unlink()
    os.mkfifo(top / "sub" / "x.jpg")  # opening it for reading would block forever
    with pytest.raises(BadImage, match="not a regular file"):
        decode_file(entries["sub/x.jpg"].entry, [32])


@pytest.mark.timeout(120)
def test_report_embeds_nothing_from_outside_and_does_not_hang(detectors, tmp_path, invoke):
    top = tmp_path / "pics"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        picture(top / name)
    picture(tmp_path / "secret.jpg", colour=(0, 0, 255), size=(60, 60))
    assert invoke("score", top).exit_code == 0
    (top / "a.jpg").unlink()
    os.mkfifo(top / "a.jpg")
    (top / "b.jpg").unlink()
    (top / "b.jpg").symlink_to(tmp_path / "secret.jpg")
    res = invoke("report", "1", "--out", tmp_path / "r.html")
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    assert len(re.findall(r"src='data:image/jpeg;base64,", html)) == 1  # only c.jpg, still itself
    shutil.rmtree(top)


def test_a_phone_mpo_picture_is_scored_by_its_first_picture(tmp_path):
    first = Image.fromarray(np.full((40, 48, 3), (200, 30, 30), np.uint8))
    second = Image.fromarray(np.full((40, 48, 3), (0, 0, 255), np.uint8))
    first.save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[second], quality=95)
    first.save(tmp_path / "plain.jpg", "JPEG", quality=95)
    with Image.open(tmp_path / "phone.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    [mpo, plain] = [e.entry for e in iter_scan([tmp_path])]
    got, want = decode_file(mpo, [32]), decode_file(plain, [32])
    assert np.abs(got.arrays[32].astype(int) - want.arrays[32].astype(int)).max() <= 2  # the red first picture, not the blue second


def test_pixel_budget_lets_pictures_decode_together_only_while_they_fit():
    import threading
    import time

    from vocfleet.model.decode import PixelBudget

    budget, order = PixelBudget(100), []

    def decode(name, pixels, seconds):
        with budget.hold(pixels):
            order.append(f"{name}+")
            time.sleep(seconds)
            order.append(f"{name}-")

    threads = [threading.Thread(target=decode, args=a) for a in (("a", 60, 0.3), ("b", 30, 0.1), ("c", 500, 0.1))]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert order[:2] == ["a+", "b+"] and order.index("c+") > order.index("a-")  # c (over the whole budget) decodes alone
    assert budget.peak == 100 and budget.used == 0


@pytest.mark.slow
def test_decode_memory_follows_the_pixel_budget(tmp_path):
    """Four 8,000 x 8,000 PNGs (840 KB each) in four threads: one at a time in memory, not four."""
    import subprocess
    import sys

    stripes = np.zeros((8000, 8000, 3), np.uint8)
    stripes[::97] = 255
    Image.fromarray(stripes).save(tmp_path / "big0.png", compress_level=1)
    for i in range(1, 4):
        shutil.copy(tmp_path / "big0.png", tmp_path / f"big{i}.png")
    probe = f"""
import re
from concurrent.futures import ThreadPoolExecutor
from vocfleet.model import decode
from vocfleet.model.scan import iter_scan
def kib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
entries = [e.entry for e in iter_scan([{str(tmp_path)!r}])]
for budget in (decode.PIXELS_IN_FLIGHT, decode.PixelBudget(10**12)):  # the default's, then none
    decode.PIXELS_IN_FLIGHT = budget
    open("/proc/self/clear_refs", "w").write("5")  # the peak so far (imports, the last round) no longer counts
    base = kib("VmRSS")
    with ThreadPoolExecutor(4) as ex:
        assert all(d.width == 8000 for d in ex.map(lambda e: decode.decode_file(e, [64]), entries))
    print((kib("VmHWM") - base) // 1024)
"""
    bounded, unbounded = map(int, subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split())
    assert bounded < 400 < 2 * bounded < unbounded, (bounded, unbounded)  # MiB: one picture's ~245 against four's


def test_training_reads_mpo_too(tmp_path):
    from vocfleet.model.data import load_rgb

    picture_ = Image.fromarray(np.full((40, 48, 3), (200, 30, 30), np.uint8))
    picture_.save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[picture_], quality=95)
    assert load_rgb(tmp_path / "phone.jpg", 32).size == (32, 32)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scoring_proc_ends_with_a_reason_for_every_file(detectors, invoke, tmp_path):
    """/proc: files that lie about their size, vanish mid-scan or cannot be read; none stops the run.

    This process's own folder (its threads come and go while it is scanned) and the kernel's
    settings: 1,500 files, not the 30,000 of all /proc (a minute, the same kinds of file).
    Files that block are the FIFOs above.
    """
    import subprocess

    assert invoke("score", "/proc/self").exit_code == 2  # given by name, the kernel's folders are refused outright
    mounts = [tmp_path / "self", tmp_path / "sys"]  # the same files under a folder of the user's (a bind mount, as a container may have)
    for mount, source in zip(mounts, (f"/proc/{os.getpid()}", "/proc/sys"), strict=True):
        mount.mkdir()
        done = subprocess.run(["mount", "--bind", source, str(mount)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount /proc here ({done.stderr.decode().strip()})")
    try:
        res = invoke("score", *mounts)
    finally:
        for mount in mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    assert res.exit_code == 0, res.output
    assert "run 1 succeeded: 0 image(s) scored" in res.output and "Traceback" not in res.output and "None" not in res.output
    from vocfleet.db.models import ScoreRun
    from vocfleet.db.session import session_scope

    with session_scope() as s:
        run = s.get(ScoreRun, 1)
        assert run.total_files > 1000 and run.error_files == run.total_files
