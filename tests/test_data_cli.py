"""vocfleet data download (against a local HTTP server on loopback) and data check."""

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import vocfleet.model.download as download
from tests.support import make_fake_voc


class Archive(BaseHTTPRequestHandler):
    """Serves one file and honours 'Range: bytes=N-' like the real VOC server."""

    body = b""
    ranges: list = []

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(self.body) - start))
        self.end_headers()
        self.wfile.write(self.body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    voc = make_fake_voc(tmp_path / "src" / "VOCdevkit" / "VOC2007", n=12)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(voc.parent, arcname="VOCdevkit")
    Archive.body, Archive.ranges = buf.getvalue(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    entry = {
        "url": f"http://127.0.0.1:{httpd.server_port}/VOCtrainval.tar",
        "filename": "VOCtrainval.tar",
        "md5": hashlib.md5(Archive.body).hexdigest(),
        "base_dir": "VOCdevkit/VOC2007",
    }
    monkeypatch.setattr(download, "DATASET_YEAR_DICT", {"2007": entry})
    monkeypatch.setattr(download, "ARCHIVES", {"2007": ["2007"]})
    yield entry
    httpd.shutdown()


def test_download_verifies_and_extracts(server, tmp_path, invoke):
    res = invoke("data", "download", "--dest", tmp_path / "voc")
    assert res.exit_code == 0, res.output
    root = tmp_path / "voc" / "VOCdevkit" / "VOC2007"
    assert (root / "ImageSets/Main/car_train.txt").is_file() and len(list((root / "JPEGImages").glob("*.jpg"))) == 11
    again = invoke("data", "download", "--dest", tmp_path / "voc")  # verified archive: no second fetch
    assert again.exit_code == 0 and Archive.ranges == [None]


def test_interrupted_download_resumes(server, tmp_path, invoke):
    dest = tmp_path / "voc"
    dest.mkdir()
    half = len(Archive.body) // 2
    (dest / "VOCtrainval.tar.part").write_bytes(Archive.body[:half])
    assert invoke("data", "download", "--dest", dest).exit_code == 0
    assert Archive.ranges == [f"bytes={half}-"]
    assert hashlib.md5((dest / "VOCtrainval.tar").read_bytes()).hexdigest() == server["md5"]


def test_checksum_mismatch_removes_archive(server, tmp_path, monkeypatch, invoke):
    monkeypatch.setitem(server, "md5", "0" * 32)
    res = invoke("data", "download", "--dest", tmp_path / "voc")
    assert res.exit_code == 1 and "checksum mismatch" in res.output
    assert not (tmp_path / "voc" / "VOCtrainval.tar").exists()


def test_offline_fails_fast_with_one_line(server, tmp_path, monkeypatch, invoke):
    monkeypatch.setitem(server, "url", "http://127.0.0.1:9/VOCtrainval.tar")  # nothing listens there
    res = invoke("data", "download", "--dest", tmp_path / "voc", "--timeout", "3")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "cannot download" in lines[0] and "fetch it by hand" in lines[0]


def test_data_check(fake_voc, invoke):
    res = invoke("data", "check", fake_voc)
    assert res.exit_code == 0
    assert "train  48      47       1        000007" in res.output
    data = json.loads(invoke("data", "check", fake_voc, "--format", "json").output)
    assert data["splits"]["train"]["missing"] == ["000007"]
    assert data["classes"]["car"]["train"]["positive"] == sum(1 for k in range(48) if k % 3 == 0 and k % 11 != 5)


def test_data_check_bad_root(tmp_path, invoke):
    res = invoke("data", "check", tmp_path)
    assert res.exit_code == 2 and "has no ImageSets/Main" in res.output
