"""Every VOCFLEET_* variable is read in one place, and the README's table and the compose file name exactly those."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIABLE = re.compile(r"VOCFLEET_[A-Z0-9_]+")


def _read_by_code() -> set[str]:
    """The variables the settings module reads, and the one the CLI takes as an option's default (--voc-root)."""
    settings = set(VARIABLE.findall((ROOT / "db" / "settings.py").read_text()))
    envvars = set(re.findall(r'envvar="(VOCFLEET_[A-Z0-9_]+)"', "".join(p.read_text() for p in (ROOT / "scheduler").rglob("*.py"))))
    return settings | envvars


def test_only_the_settings_module_reads_the_environment():
    readers = []
    for folder in ("model", "db", "worker", "scheduler", "vocfleet"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"""(environ|getenv|\benv)\s*(\.get)?\s*[(\[]\s*["']VOCFLEET_""", text):
                readers.append(str(path.relative_to(ROOT)))
    assert readers == ["db/settings.py"]


def test_the_readme_table_names_exactly_the_variables_read():
    table = re.search(r"\| variable \| meaning \|\n\| --- \| --- \|\n((?:\|.*\n)+)", (ROOT / "README.md").read_text())
    assert table, "the README's environment table is missing"
    documented = set(VARIABLE.findall("".join(line.split("|")[1] for line in table.group(1).splitlines())))
    assert documented == _read_by_code()


def test_the_compose_file_sets_only_variables_that_are_read():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    used = set()
    for service in compose["services"].values():
        env = service.get("environment") or {}
        used |= {k for k in (env if isinstance(env, dict) else [e.split("=")[0] for e in env]) if k.startswith("VOCFLEET_")}
    anchors = set(VARIABLE.findall((ROOT / "docker-compose.yml").read_text()))
    assert used | anchors <= _read_by_code() and used


def test_every_training_setting_is_a_submit_option():
    """A TrainConfig field the CLI cannot set would be reachable from the Python API only; error messages name options that exist."""
    from dataclasses import fields

    from vocfleet.model.config import TrainConfig
    from vocfleet.scheduler.commands.training import submit

    options = {p.name for p in submit.params}
    # Set through another option: --classes, --voc-root given again (--start sets the start job's key).
    through = {"voc_class": "classes", "more_roots": "voc_root"}
    missing = [f.name for f in fields(TrainConfig) if through.get(f.name, f.name) not in options]
    assert missing == []
    said = set(re.findall(r"--([a-z][a-z-]+)", (ROOT / "model" / "config.py").read_text()))
    assert {name.replace("-", "_") for name in said} <= options
