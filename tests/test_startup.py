"""The CLI starts without its heavy dependencies: commands that need no network import no torch."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "numpy", "PIL", "matplotlib", "sklearn", "cv2", "celery")
PROBE = """
import json, sys
from vocfleet.scheduler.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="vocfleet")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules], "sqlalchemy": "sqlalchemy" in sys.modules}))
""".replace("HEAVY", repr(HEAVY))


def probe(*args, data_dir):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env={"VOCFLEET_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}, check=False
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["submit", "--help"], ["score", "--help"], ["data", "--help"]])
def test_help_imports_neither_torch_nor_sqlalchemy(args, data_dir):
    got = probe(*args, data_dir=data_dir)
    assert got == {"code": 0, "heavy": [], "sqlalchemy": False}


@pytest.mark.parametrize("args", [["status"], ["runs"], ["detectors"], ["results", "1"], ["cancel", "7"]])
def test_database_commands_import_no_torch(args, data_dir):
    got = probe(*args, data_dir=data_dir)
    assert got["heavy"] == [] and got["code"] in (0, 1, 2)  # cancel 7: no such job, exit 1


COMPLETE = """
import json, os, sys
os.environ.update(_VOCFLEET_COMPLETE="bash_complete", COMP_WORDS=sys.argv[1], COMP_CWORD=str(len(sys.argv[1].split()) - 1))
from vocfleet.scheduler.cli import cli
try:
    cli.main([], prog_name="vocfleet")
except SystemExit:
    pass
print(json.dumps({"heavy": [m for m in HEAVY if m in sys.modules], "sqlalchemy": "sqlalchemy" in sys.modules}))
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize(
    ("words", "offered"),
    [("vocfleet sub", ["submit"]), ("vocfleet submit --bal", ["--balance"]), ("vocfleet submit --classes car,d", ["car,diningtable", "car,dog"])],
)
def test_shell_completion_is_light(words, offered, data_dir):
    out = subprocess.run(
        [sys.executable, "-c", COMPLETE, words], capture_output=True, text=True, env={"VOCFLEET_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}, check=True
    ).stdout.splitlines()
    assert [line.split(",", 1)[1] for line in out[:-1]] == offered
    assert json.loads(out[-1]) == {"heavy": [], "sqlalchemy": False}
