"""The package's imports run one way: cli -> launch -> report -> run / exports -> meta, rewriting,
engines, inputs, tars -> workdir -> the base modules (ARCHITECTURE.md). Read from the code with `ast`,
so adding an import that runs back up, or an import circle, fails here, naming it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rewrite"
FLOORS = {  # room -> floor: a module imports from rooms on its floor or below, never above
    "cli": 6,
    "launch": 5,
    "report": 4,
    "run": 3, "exports": 3,
    "meta": 2, "rewriting": 2, "engines": 2, "inputs": 2, "tars": 2,
    "workdir": 1,
    "defaults": 0, "stop": 0, "faults": 0, "children": 0, "resources": 0, "storage": 0, "remote": 0,
}
LONG = 400  # lines; a longer module says at its top why it is one concern


def module_name(path: Path) -> str:
    parts = ["rewrite", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports (a name imported from a package counts as its module
    when it is one, else as the package)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rewrite")}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("rewrite"):
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {m for m in found if m in modules and m != module_name(path)}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) for name, path in paths.items()}


def test_every_room_has_a_floor():
    rooms = {room(m) for m in graph()} - {None}
    assert rooms <= set(FLOORS), f"modules outside the map: {sorted(rooms - set(FLOORS))}: give them a floor"


def test_no_import_runs_back_up():
    upward = [f"{m} -> {t}" for m, targets in graph().items() for t in targets
              if room(m) and room(t) and FLOORS[room(t)] > FLOORS[room(m)]]
    assert not upward, "imports from a lower floor to a higher one: " + "; ".join(sorted(upward))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if t.startswith(m + "."):
                continue  # a package's face importing its own modules
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_a_long_module_says_why_it_is_one_concern():
    long = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
            if len(p.read_text().splitlines()) > LONG and "One concern" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not long, f"modules over {LONG} lines without a reason at their top ('One concern: ...'): {long}"


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a package with a circle and an upward import is refused."""
    package = tmp_path / "rewrite"
    (package / "workdir").mkdir(parents=True)
    (package / "run").mkdir()
    (package / "__init__.py").write_text("")
    (package / "workdir" / "__init__.py").write_text("")
    (package / "run" / "__init__.py").write_text("")
    (package / "workdir" / "a.py").write_text("from ..run import b\n")
    (package / "run" / "b.py").write_text("from ..workdir import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    with pytest.raises(AssertionError, match="rewrite.workdir.a -> rewrite.run.b"):
        test_no_import_runs_back_up()
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle()


def room_paragraphs(text: str) -> dict[str, str]:
    """ARCHITECTURE.md's paragraph of each room: from a line starting with `room/` (or "Base") to the next."""
    found, current = {}, None
    for line in text.splitlines():
        start = re.match(r"^`([a-z_]+)/`", line) or (re.match(r"^Base \(", line) and "base")
        if start:
            current = start if isinstance(start, str) else start.group(1)
        elif line.startswith("#"):
            current = None
        if current:
            found[current] = found.get(current, "") + line + "\n"
    return found


def test_the_map_names_every_module_in_its_room_and_only_modules_that_exist():
    """ARCHITECTURE.md says what each module is for: each room's paragraph names its modules, and the
    map names none that is gone."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    paragraphs = room_paragraphs(text)
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    unnamed = sorted(str(p.relative_to(PACKAGE)) for p in modules
                     if f"`{p.name}`" not in paragraphs.get(p.parent.name if p.parent != PACKAGE else "base", ""))
    gone = sorted(set(re.findall(r"`(?:[a-z_]+/)?([a-z_]+\.py)`", text)) - {p.name for p in modules} - {"test_layers.py", "test_storage_seam.py"})
    assert not unnamed and not gone, f"ARCHITECTURE.md: modules not named in their room {unnamed}, named but gone {gone}"
