"""docs/reliability.md's tables: hostile inputs through the real CLI, and what each one got.

Not a speed benchmark: it runs every bad value of tests/test_hardening.py (the same lists) and a
folder of hostile files through `vocfleet` as subprocesses, on a fresh embedded database, and
prints Markdown tables: the input, the exit code, the lines written to stderr, the first of
them (or the file's reason), and whether any output held a traceback. Takes about a minute.

    python bench/reliability.py > /tmp/reliability.md   # then paste below the heading of docs/reliability.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from common import ROOT
from PIL import Image

sys.path.insert(0, str(ROOT))
from tests.support import make_fake_voc  # after the path is set
from tests.test_hardening import COMMAND_CASES, ENV_CASES, SMALL, SUBMIT_CASES

VOCFLEET = [sys.executable, "-m", "vocfleet"]


def cli(args: list, env: dict[str, str], extra_env: dict[str, str] | None = None) -> tuple[int, list[str], bool]:
    res = subprocess.run([*VOCFLEET, *map(str, args)], capture_output=True, text=True, env={**env, **(extra_env or {})}, check=False)
    return res.returncode, res.stderr.strip().splitlines(), "Traceback" in res.stdout + res.stderr


def cell(text: str, limit: int = 110) -> str:
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def picture(path: Path, colour=(200, 30, 30), size=(64, 48), **save) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path, **save)
    return path


def png_bomb(path: Path, side: int) -> None:
    """A valid grey PNG of side x side zeros, written row by row: a few hundred KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z, row, body = zlib.compressobj(9), b"\0" * (side + 1), []
    body += [z.compress(row) for _ in range(side)]
    body.append(z.flush())
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))


def hostile_folder(top: Path) -> dict[str, str]:
    """Files people's folders really hold, and some an attacker would plant: name -> what it is."""
    top.mkdir()
    made = {}

    def add(name: str, what: str) -> None:
        made[name] = what

    picture(top / "ok.jpg", quality=90)
    add("ok.jpg", "an ordinary JPEG")
    raw = os.path.join(os.fsencode(top), b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write((top / "ok.jpg").read_bytes())
    add("caf\\xe9.jpg", "a name that is not UTF-8 (old archives, SMB shares)")
    (top / "loop_a").symlink_to(top / "loop_b")
    (top / "loop_b").symlink_to(top / "loop_a")
    add("loop_a", "a link loop (a -> b -> a)")
    add("loop_b", "the other half of the loop")
    (top / "passwd.jpg").symlink_to("/etc/passwd")
    add("passwd.jpg", "a link to /etc/passwd")
    (top / "gone.jpg").symlink_to(top / "nowhere.jpg")
    add("gone.jpg", "a broken link")
    os.mkfifo(top / "pipe.jpg")
    add("pipe.jpg", "a named pipe (reading it would block forever)")
    (top / "empty.jpg").write_bytes(b"")
    add("empty.jpg", "an empty file")
    data = (top / "ok.jpg").read_bytes()
    (top / "truncated.jpg").write_bytes(data[: len(data) // 2])
    add("truncated.jpg", "half a JPEG")
    (top / "notes.jpg").write_text("not a picture\n")
    add("notes.jpg", "text named .jpg")
    with open(top / "sparse.jpg", "wb") as fh:  # 300 MB of nothing, without the disk space
        fh.truncate(300 * 2**20)
    add("sparse.jpg", "a 300 MB file")
    png_bomb(top / "bomb.png", 20_000)
    add("bomb.png", "a decompression bomb: 20,000 x 20,000 pixels in a small PNG")
    stripes = np.zeros((8000, 8000, 3), np.uint8)
    stripes[::97] = 255
    Image.fromarray(stripes).save(top / "huge.png")
    add("huge.png", "8,000 x 8,000 pixels, 190 KB")
    first = Image.fromarray(np.full((48, 64, 3), (200, 30, 30), np.uint8))
    first.save(top / "phone.jpg", "MPO", save_all=True, append_images=[first])
    add("phone.jpg", "a phone's multi-picture JPEG (MPO)")
    Image.fromarray(np.full((48, 64, 4), (0, 255, 255, 0), np.uint8), "CMYK").save(top / "print.jpg")
    add("print.jpg", "a CMYK JPEG")
    Image.fromarray(np.full((48, 64), 40000, np.uint16)).save(top / "scan16.png")
    add("scan16.png", "a 16-bit grey PNG")
    formula = "=cmd|' -C calc'!A0.jpg"  # (a file name cannot hold the usual '/C')
    picture(top / formula, quality=90)
    add(formula, "a name that is a spreadsheet formula")
    picture(top / "new\nline.jpg", quality=90)
    add("new\\nline.jpg", "a newline in the name")
    picture(top / "\x1b[31mred.jpg", quality=90)
    add("\\x1b[31mred.jpg", "a terminal escape sequence in the name")
    picture(top / ".hidden.jpg", quality=90)
    return made


def detector_intact(data_dir: Path) -> bool:
    """Every detector row's file is in the data folder's store, with its sha256."""
    import hashlib
    import sqlite3

    with sqlite3.connect(data_dir / "vocfleet.db") as conn:
        rows = conn.execute("SELECT checkpoint_path, sha256 FROM detectors").fetchall()
    store = data_dir / "artifacts"
    return bool(rows) and all((store / loc).is_file() and hashlib.sha256((store / loc).read_bytes()).hexdigest() == sha for loc, sha in rows)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOCFLEET_")} | {"VOCFLEET_DATA_DIR": str(tmp / "data")}
        voc = make_fake_voc(tmp / "VOC2007")
        rows = []
        for args, _ in SUBMIT_CASES:
            rows.append((f"`submit {' '.join(map(str, args))}`", *cli(["submit", "--classes", "car", "--voc-root", voc, *SMALL, *args], env)))
        for args, _ in COMMAND_CASES:
            rows.append((f"`{' '.join(map(str, args))}`", *cli(args, env)))
        for extra, _, _ in ENV_CASES:
            rows.append((f"`{' '.join(f'{k}={v}' for k, v in extra.items())} vocfleet status`", *cli(["status"], env, extra)))
        files = hostile_folder(tmp / "hostile")
        code, lines, traceback = cli(["submit", "--classes", "car", "--voc-root", voc, *SMALL], env)
        assert code == 0, lines
        code, lines, traceback = cli(["run"], env)
        assert code == 0, lines
        rows.append(("`report --fleet --out /proc/x/report.html`", *cli(["report", "--fleet", "--out", "/proc/x/report.html"], env)))
        rows.append(("`score /no/such/folder`", *cli(["score", "/no/such/folder"], env)))
        code, lines, traceback = cli(["score", tmp / "hostile"], env)
        score = (code, traceback)
        rows.append(("`results 1 --class sheep` (no sheep detector)", *cli(["results", "1", "--class", "sheep"], env)))
        # Nothing lost: what would destroy a detector or a database is refused or harmless.
        detector = next((tmp / "data" / "artifacts" / "jobs").glob("*/detector.pt"))
        rows.append(("`export 1 --out <its own detector.pt> --force`", *cli(["export", "1", "--out", detector, "--force"], env)))
        cli(["export", "1", "--out", tmp / "car.pt"], env)
        rows.append(("`export 1 --out car.pt` (exists)", *cli(["export", "1", "--out", tmp / "car.pt"], env)))
        moved = tmp / "moved" / "data"
        moved.parent.mkdir()
        (tmp / "data").rename(moved)
        env_moved = env | {"VOCFLEET_DATA_DIR": str(moved)}
        gc = subprocess.run([*VOCFLEET, "gc", "--yes"], capture_output=True, text=True, env=env_moved, check=False)
        kept = detector_intact(moved)
        gone = cell(gc.stdout.strip().splitlines()[-1]) + ("; every detector intact" if kept else "; **a detector is gone**")
        data_loss = [("`mv` the data folder, then `gc --yes`", gc.returncode, gone)]
        (moved / "vocfleet.db").rename(tmp / "vocfleet.db.bak")
        code, lines, traceback = cli(["status"], env_moved)
        data_loss.append(
            (
                "the database file deleted, then `status`",
                code,
                cell(lines[0] if lines else "") + (" (no empty database made)" if not (moved / "vocfleet.db").exists() else " **(an empty one was made)**"),
            )
        )
        print("### Bad values\n")
        print("| input | exit | stderr lines | what it said | traceback |\n| --- | --- | --- | --- | --- |")
        for name, code, lines, traceback in rows:
            print(f"| {cell(name, 60)} | {code} | {len(lines)} | {cell(lines[0] if lines else '')} | {'**yes**' if traceback else 'no'} |")

        print("\n### Data loss\n")
        print("| what | exit | outcome |\n| --- | --- | --- |")
        for name, code, outcome in data_loss:
            print(f"| {name} | {code} | {outcome} |")
        (tmp / "vocfleet.db.bak").rename(moved / "vocfleet.db")
        env = env_moved

        code, traceback = score
        res = subprocess.run([*VOCFLEET, "results", "1", "--errors", "--format", "json"], capture_output=True, text=True, env=env, check=True)
        errors = {e["file"]: e["reason"] for e in json.loads(res.stdout)}
        res = subprocess.run([*VOCFLEET, "results", "1", "--format", "json"], capture_output=True, text=True, env=env, check=True)
        scored = {r["image"] for r in json.loads(res.stdout)}
        print(f"\n### A folder of hostile files (`vocfleet score`: exit {code}, traceback: {'**yes**' if traceback else 'no'})\n")
        print("| file | what it is | outcome |\n| --- | --- | --- |")
        for name, what in files.items():
            stored = name.replace("\\n", "\n").replace("\\x1b", "\x1b") if name not in errors else name
            if name in errors:
                outcome = f"not scored: {errors[name]}"
            elif stored in scored or name in scored:
                outcome = "scored"
            else:
                outcome = "**missing from the results**"
            print(f"| `{cell(name, 40)}` | {what} | {cell(outcome)} |")
        csv_text = subprocess.run([*VOCFLEET, "results", "1", "--format", "csv"], capture_output=True, text=True, env=env, check=True).stdout
        table = subprocess.run([*VOCFLEET, "results", "1"], capture_output=True, text=True, env=env, check=True).stdout
        [formula] = [line.split(",")[0] for line in csv_text.splitlines() if "cmd|" in line]
        print(f"\nIn the CSV export the formula's name is written `{formula}` (a leading quote: spreadsheets show it as text).")
        raw = "\x1b" in table or "new\nline" in table
        print(f"On a terminal, names with control characters are printed escaped: raw escape or newline in `results 1`: {'**yes**' if raw else 'no'}.")
        print("Hidden files (`.hidden.jpg`) are not scanned, by design.")


if __name__ == "__main__":
    main()
