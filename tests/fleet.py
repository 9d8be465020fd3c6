"""The fleet the fleet tests run: a private redis-server, `vocfleet worker` and `scheduler` subprocesses, and what they check."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from sqlalchemy import func, select

from tests.support import connectable, free_port, wait_for
from vocfleet.db.models import Detector, JobStatus, ScoreRun, ScoreShard, TrainJob
from vocfleet.db.session import session_scope
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import fit

VOCFLEET = [sys.executable, "-m", "vocfleet"]
REDIS = shutil.which("redis-server")


class Redis:
    """A private, restartable redis-server (no persistence, like the default broker here)."""

    def __init__(self, port: int, workdir: Path):
        self.port, self.workdir, self.proc = port, workdir, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: connectable(self.port), 20, "redis-server to accept connections")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Outage:
    """A TCP proxy in front of a server, which a test takes away and brings back.

    While it is down, connections to it are refused and those open are cut: the server unreachable
    from the workers, its state kept (moto's server keeps its buckets only in memory).
    """

    def __init__(self, target_port: int):
        self.target, self.port = target_port, free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        listener.close()
        with self._lock:
            for conn in self._open:
                _close(conn)
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            for conn in (src, dst):
                self._open.discard(conn)
                _close(conn)


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


class Postgres:
    """A private, restartable PostgreSQL server on a spare port (the machine's own is never restarted).

    It runs as the ``postgres`` account (the server refuses root), in a folder of its own under the
    system's temporary folder (pytest's is private to root).
    """

    def __init__(self, port: int):
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="vocfleet-pg-"))
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-o", opts, "-w", "-l", str(self.dir / "server.log"), "start")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


class Fleet:
    def __init__(self, tmp: Path, voc: Path):
        self.tmp, self.voc = tmp, voc
        self.procs: dict[str, subprocess.Popen] = {}

    def start_worker(self, name: str, queues: str = "train,score", env: dict[str, str] | None = None) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [*VOCFLEET, "worker", "--gpus", "none", "--name", name, "--queues", queues, "--loglevel", "info"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, *names: str, timeout: float = 120) -> None:
        """Until each named worker says it is ready (its queues are bound: a message sent before would find no queue)."""
        for name in names:
            self.wait(lambda n=name: " ready." in (self.tmp / f"{n}.log").read_text(), timeout, f"worker {name} to be ready")

    def start_scheduler(self, env: dict[str, str] | None = None) -> None:
        log = open(self.tmp / "scheduler.log", "w")
        self.procs["scheduler"] = subprocess.Popen(
            [*VOCFLEET, "scheduler", "--interval", "1", "--resend-after", "3"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)  # the worker and its forked child: the whole host is gone
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGKILL)

    def submit(self, classes: str, epochs: int, max_batches: int = 3, image_size: int = 32, *more: str) -> None:
        """Jobs of the tiny network (the same code as ResNet-50 at 1/8 width): a larger image size paces the epochs; ``more``: further options."""
        subprocess.run(
            [
                *VOCFLEET,
                "submit",
                "--classes",
                classes,
                "--voc-root",
                str(self.voc),
                "--arch",
                "tiny",
                "--epochs",
                str(epochs),
                "--image-size",
                str(image_size),
                "--batch-size",
                "8",
                "--max-batches",
                str(max_batches),
                "--start",
                "none",  # each class on its own, unless ``more`` says otherwise
                *more,
            ],
            check=True,
            capture_output=True,
            text=True,
        )

    def wait(self, predicate, timeout: float, what: str):
        """wait_for, with the job rows and every process's log in the failure message."""
        try:
            return wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{job_rows()}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))


FLEET_ENV = {"VOCFLEET_HEARTBEAT_SECONDS": "0.5", "VOCFLEET_STALE_SECONDS": "5", "VOCFLEET_VISIBILITY_TIMEOUT": "30", "PYTHONUNBUFFERED": "1"}


def job_rows():
    with session_scope() as s:
        return {j.id: (j.status, j.epochs_done, j.worker_host, j.attempts) for j in s.scalars(select(TrainJob))}


def all_finished(n: int):
    rows = job_rows()
    return len(rows) == n and all(st.finished for st, *_ in rows.values())


def assert_ran_once_each(epochs: int):
    with session_scope() as s:
        for job in s.scalars(select(TrainJob)):
            assert job.status == JobStatus.succeeded, (job, job.error)
            assert [e.epoch for e in job.epochs] == list(range(1, epochs + 1))
            assert s.scalar(select(func.count()).select_from(Detector).where(Detector.job_id == job.id)) == 1
        assert s.scalar(select(func.count()).select_from(Detector).where(Detector.active.is_(True))) == len(job_rows())


def add_detectors(fleet, tmp_path) -> None:
    """Two small real detectors (car, dog) trained on the fleet's fake VOC tree, made active."""
    for cls in ("car", "dog"):
        cfg = TrainConfig(
            voc_class=cls, voc_root=str(fleet.voc), arch="tiny", image_size=32, epochs=1, batch_size=8, max_batches=2, eval_fraction=0.3, val_fraction=0.3
        )
        r = fit(cfg, out_dir=tmp_path / "det" / cls, cache_dir=tmp_path / "cache")
        with session_scope() as s:
            s.add(Detector(voc_class=cls, checkpoint_path=r.checkpoint, sha256=r.sha256, threshold=r.threshold, ap=r.metrics["ap"], metrics=r.metrics))


def shard_rows(run_id: int = 1):
    with session_scope() as s:
        return s.execute(
            select(ScoreShard.number, ScoreShard.status, ScoreShard.worker_host, ScoreShard.attempts)
            .where(ScoreShard.run_id == run_id)
            .order_by(ScoreShard.number)
        ).all()


def count_shards(status: JobStatus) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(ScoreShard).where(ScoreShard.status == status))


def run_finished(run_id: int = 1):
    """The scoring run once it has ended (a wait predicate), else None."""
    with session_scope() as s:
        run = s.get(ScoreRun, run_id)
        return run if run.status.finished else None
