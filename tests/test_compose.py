"""docker-compose.yml and the Dockerfile: read by Debian's docker-compose where it is installed, and held to the code (no Docker engine here)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vocfleet.db import settings as settings_module
from vocfleet.scheduler.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_present():
    assert {"redis", "postgres", "s3", "s3-bucket", "migrate", "scheduler", "train-worker", "score-worker", "web", "flower"} <= set(compose()["services"])


def test_vocfleet_commands_exist():
    services = compose()["services"]
    for name in ("migrate", "scheduler", "train-worker", "score-worker", "web"):
        cmd = services[name]["command"]
        command = cli.commands.get(cmd[0])
        assert command is not None, f"{name}: no 'vocfleet {cmd[0]}'"
        if hasattr(command, "commands"):
            assert cmd[1] in command.commands, f"{name}: no 'vocfleet {cmd[0]} {cmd[1]}'"
            command, cmd = command.commands[cmd[1]], cmd[1:]
        options = {o for p in command.params for o in p.opts}
        for arg in cmd[1:]:
            if arg.startswith("--"):
                assert arg in options, f"{name}: 'vocfleet {cmd[0]}' has no {arg}"


def test_broker_and_database_durability():
    services = compose()["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_gpu_worker_reserves_nvidia_device_and_queues_split():
    services = compose()["services"]
    devices = services["train-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "container_name" not in services["train-worker"]  # --scale needs unnamed containers
    assert services["train-worker"]["command"][2] == "train" and services["score-worker"]["command"][2] == "score"


def test_environment_names_are_read_by_the_code():
    env = compose()["services"]["scheduler"]["environment"]
    code = Path(settings_module.__file__).read_text() + "".join(p.read_text() for p in (ROOT / "scheduler").rglob("*.py"))
    ours = [name for name in env if not name.startswith("AWS_")]  # AWS_*: read by botocore (s3fs), not by us
    assert ours and all(f'"{name}"' in code for name in ours), [name for name in ours if f'"{name}"' not in code]


def test_dockerfile_copies_existing_sources_and_runs_the_cli():
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    assert 'ENTRYPOINT ["vocfleet"]' in text
    assert 'vocfleet = "vocfleet.scheduler.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_ports_bind_to_this_host_unless_told_otherwise():
    text = (ROOT / "docker-compose.yml").read_text()
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith(("${BIND_ADDR:-127.0.0.1}:", "127.0.0.1:")), f"{name} publishes {port} on every interface"
    assert "${BIND_ADDR:-127.0.0.1}:5555" not in text  # Flower shows and controls tasks: this host only, always
    assert compose()["services"]["web"]["ports"] == ["127.0.0.1:8000:8000"]  # the results and pictures: this host only too


def test_credentials_come_from_the_environment():
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    assert "vocfleet:vocfleet@" not in text and "POSTGRES_PASSWORD: vocfleet" not in text
    used = set(re.findall(r"\$\{(\w+)", text))
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "S3_PASSWORD", "FLOWER_PASSWORD", "WEB_PASSWORD"} <= used
    for name in used:
        assert re.search(rf"^{name}=", example, re.M), f"{name} is used in compose but not in .env.example"
    for password in re.findall(r"\$\{(\w*PASSWORD)([^}]*)\}", text):
        assert password[1].startswith(":?"), f"{password[0]} has a default: compose must refuse to start without it"
    services = compose()["services"]
    assert "--requirepass" in services["redis"]["command"] and "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["redis"]["environment"]["REDISCLI_AUTH"]  # the health check authenticates too
    assert services["web"]["environment"]["VOCFLEET_WEB_PASSWORD"].startswith("${WEB_PASSWORD:?")


def test_workers_share_a_bucket_not_a_disk():
    env = compose()["services"]["train-worker"]["environment"]
    assert env["VOCFLEET_ARTIFACT_ROOT"].startswith("s3://") and env["VOCFLEET_S3_ENDPOINT_URL"] == "http://s3:9000"
    bucket = env["VOCFLEET_ARTIFACT_ROOT"].split("/")[2]
    assert f"fs.mkdir('{bucket}')" in compose()["services"]["s3-bucket"]["command"][-1]
    assert "s3" in re.search(r'pip install "\.\[([\w,]+)\]"', (ROOT / "Dockerfile").read_text()).group(1)


def test_images_are_pinned_and_the_s3_server_is_one_that_is_served():
    """Every pulled image names a version (a moving tag changes the stack under a running fleet); not MinIO's, which Docker Hub no longer serves."""
    for name, service in compose()["services"].items():
        image = service.get("image", "")
        if image and not image.startswith("vocfleet:"):  # vocfleet's own image is built here
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", f"{name}: {image} is not pinned to a version"
            assert not repo.startswith("minio/"), f"{name}: {image} is no longer served by Docker Hub"
    s3 = compose()["services"]["s3"]
    assert "/healthz" in " ".join(s3["healthcheck"]["test"]) and any(v.endswith(":/data") for v in s3["volumes"])
    assert '"$$S3_PASSWORD"' in s3["command"][0]  # the secret is read inside the container, not written into the file


def test_compose_itself_reads_the_file_and_refuses_it_without_passwords(tmp_path):
    """Debian's docker-compose (1.29) checks the file as compose does, with no engine: valid with .env filled in, refused without."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it: apt-get install docker-compose)")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")  # the build context compose resolves
    bare = subprocess.run([tool, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bare.returncode != 0 and "PASSWORD in .env" in bare.stderr, bare.stderr
    env = re.sub(r"^(\w+_PASSWORD)=$", r"\1=secret1", (ROOT / ".env.example").read_text(), flags=re.M)
    (tmp_path / ".env").write_text(env)
    good = subprocess.run([tool, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    resolved = yaml.safe_load(good.stdout)
    assert resolved["services"]["web"]["environment"]["VOCFLEET_WEB_PASSWORD"] == "secret1"
    assert resolved["services"]["train-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
