"""The package's import graph: no cycle, not even through an import inside a function, and layers that import downwards only."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The installed package's names for the repository's folders (pyproject.toml's package-dir).
FOLDERS = {"vocfleet": "vocfleet", "model": "vocfleet.model", "db": "vocfleet.db", "worker": "vocfleet.worker", "scheduler": "vocfleet.scheduler"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, anywhere in the file (function bodies too), resolved to known modules."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__ is not a cycle
                found.add(target)
    return found


def test_no_import_cycle_anywhere_in_the_package():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The test above can fail: two modules that import each other inside functions are caught."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from vocfleet.db import b\n")
    b.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vocfleet.db import c\ndef g():\n    from . import a\n")
    known = {"vocfleet.db.a", "vocfleet.db.b", "vocfleet.db.c"}
    assert _imports("vocfleet.db.a", a, known) == {"vocfleet.db.b"}
    assert _imports("vocfleet.db.b", b, known) == {"vocfleet.db.a"}  # the TYPE_CHECKING import is not counted


def test_every_name_imported_inside_the_package_exists():
    """Imports inside functions run only when the function does: each one's module and name must exist (a rename caught here, not in a fleet)."""
    import importlib

    modules = _modules()
    missing = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("vocfleet")):
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join([*anchor[: len(anchor) - node.level + 1], *([node.module] if node.module else [])])
            module = importlib.import_module(base)
            for alias in node.names:
                if not hasattr(module, alias.name) and f"{base}.{alias.name}" not in modules:
                    missing.append(f"{path.relative_to(ROOT)}: {base}.{alias.name}")
    assert missing == []


# docs/architecture.md: layers import downwards only, scheduler -> worker -> db -> model.
LAYERS = ["vocfleet.model", "vocfleet.db", "vocfleet.worker", "vocfleet.scheduler"]


def _layer(module: str) -> int | None:
    return next((i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + ".")), None)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a higher layer than its own (type-checking imports excluded)."""
    bad = []
    for name, targets in graph.items():
        mine = _layer(name)
        for target in sorted(targets):
            theirs = _layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{name} imports {target}")
    return bad


def test_layers_import_downwards_only():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert layer_violations(graph) == []


def test_the_layer_check_finds_an_upward_import():
    assert layer_violations({"vocfleet.model.data": {"vocfleet.db.session"}, "vocfleet.db.x": {"vocfleet.model.data"}}) == [
        "vocfleet.model.data imports vocfleet.db.session"
    ]


def test_every_error_meant_for_a_person_has_one_base():
    """The CLI and the web app handle VocfleetError in one place each; an error class outside it would print a traceback.

    Exceptions that are control flow, not messages (a stop request, a lost claim, a file's recorded reason), are listed.
    """
    import importlib
    import inspect

    from vocfleet.model import VocfleetError

    control_flow = {"Stopped", "RunCancelled", "NotClaimed", "WorkFailed", "BadImage", "UnsafeFile", "_Closed", "Interrupted"}
    outside = []
    for name in _modules():
        if name.endswith(("__main__", "celery_app", "tasks")):
            continue  # importing them starts Celery's app
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException) and cls_name not in control_flow and not issubclass(cls, VocfleetError):
                outside.append(f"{name}.{cls_name}")
    assert outside == []


def test_one_executor_decides_fleet_or_embedded(monkeypatch):
    """Only the executor reads the broker URL to decide where work runs; the rest ask it (the broker's own modules connect to it)."""
    connects = {"vocfleet.worker.executor", "vocfleet.worker.dispatch", "vocfleet.worker.celeryconfig", "vocfleet.scheduler.doctor", "vocfleet.db.settings"}
    readers = [name for name, path in _modules().items() if name not in connects and ".broker_url" in path.read_text()]
    assert readers == []

    from vocfleet.db.models import TrainJob
    from vocfleet.db.settings import get_settings
    from vocfleet.worker.executor import executor

    monkeypatch.delenv("VOCFLEET_BROKER_URL", raising=False)
    local = executor(get_settings())
    assert not local.fleet and local.hand_over(TrainJob, [1, 2]) == (None, "run them with: vocfleet run") and local.reaper == "'vocfleet run'"
    monkeypatch.setenv("VOCFLEET_BROKER_URL", "redis://127.0.0.1:6379/0")
    assert executor(get_settings()).fleet and executor(get_settings()).hand_over(TrainJob, []) == (0, "sent 0 to the broker")
