"""The import rules of the code's layout (README, "Map of the code"), computed from the source.

Every .py file of the repository is parsed (AST); every import it makes, at the top or inside a
function, is resolved to a module of ours or a third-party package. Then:

- each folder (room) imports only the rooms it may (RULES), and never a forbidden third-party package;
- no module of ours imports another that, through any chain of imports, imports it back (a cycle).

`test_the_rules_can_fail` plants a broken rule and a cycle in a scratch tree and checks both are found.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIPPED_FOLDERS = {".venv", "build", "dist", "runs", "out", ".git", "__pycache__", ".hypothesis", ".pytest_cache"}

# room -> the rooms of ours it may import (itself always). Rooms not listed may import nothing of ours.
RULES: dict[str, set[str]] = {
    "contract": set(),
    "client": {"contract"},
    "server": {"client", "contract"},
    "models": {"contract"},
    "blender_addon": {"client", "contract"},  # in Blender its vendored copies; in this repository (tests) the originals
    "unreal_bridge": {"client", "contract"},  # the relay and the package builder run outside Unreal
    "megalive": {"server", "client", "contract", "unreal_bridge", "blender_addon"},  # the one CLI that assembles the hosts' commands
    "tests": {"contract", "client", "server", "models", "blender_addon", "unreal_bridge", "megalive"},
    "bench": {"contract", "client", "server", "models", "blender_addon", "unreal_bridge", "megalive"},
}
# room -> third-party packages it must never import (the runtime installs without torch).
FORBIDDEN: dict[str, set[str]] = {
    "contract": {"torch", "zmq", "onnxruntime", "bpy", "unreal"},
    "client": {"torch", "onnxruntime", "bpy", "unreal"},  # numpy only inside functions (the hosts may lack it)
    "server": {"torch", "bpy", "unreal"},
    "models": {"bpy", "unreal", "zmq"},
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (ours resolved to the longest existing module)
    line: int


def python_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if not any(part in SKIPPED_FOLDERS or part.startswith(".") for part in parts[:-1]):
            files.append(path)
    return files


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> list[Import]:
    """Every import in the file, relative ones resolved against its package."""
    source = module_name(path, root)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found: list[Import] = []

    def add(name: str, line: int) -> None:
        # The longest prefix that is one of our modules, so `from pkg import mod` lands on pkg.mod.
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                found.append(Import(source=source, target=candidate, line=line))
                return
        found.append(Import(source=source, target=name, line=line))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:
                add(f"{stem}.{alias.name}" if stem else alias.name, node.lineno)
    return found


def import_graph(root: Path) -> tuple[set[str], list[Import]]:
    files = python_files(root)
    modules = {module_name(path, root) for path in files}
    edges = [edge for path in files for edge in imports_of(path, root, modules)]
    return modules, edges


def room(module: str) -> str:
    return module.split(".")[0]


def rule_breaks(root: Path) -> list[str]:
    modules, edges = import_graph(root)
    ours = {room(module) for module in modules}
    breaks = []
    for edge in edges:
        source_room, target_room = room(edge.source), room(edge.target)
        if source_room not in RULES:
            continue
        if target_room in ours and target_room != source_room and target_room not in RULES[source_room]:
            allowed = sorted(RULES[source_room]) or "nothing of ours"
            breaks.append(f"{edge.source}:{edge.line} imports {edge.target} ({source_room} may import {allowed})")
        if target_room in FORBIDDEN.get(source_room, set()):
            breaks.append(f"{edge.source}:{edge.line} imports {edge.target} (never in {source_room})")
    return breaks


def cycles(root: Path) -> list[list[str]]:
    """Import cycles among our modules (Tarjan's strongly connected components of size > 1, or a self-import)."""
    modules, edges = import_graph(root)
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for edge in edges:
        if edge.target in modules and edge.target != edge.source:
            # Importing a package runs its __init__; importing pkg.mod from pkg.__init__ is the package itself.
            if not (edge.source == room(edge.source) and edge.target.startswith(edge.source + ".")):
                graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_every_import_follows_the_rules() -> None:
    assert rule_breaks(REPO_ROOT) == []


def test_there_is_no_import_cycle_anywhere() -> None:
    assert cycles(REPO_ROOT) == []


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """A scratch tree that breaks each kind of rule: the checks above must name every break."""
    files = {
        "contract/__init__.py": "",
        "contract/arkit.py": "import server.service\n",  # contract imports nothing of ours
        "client/__init__.py": "",
        "client/protocol.py": "def f():\n    import torch\n",  # a lazy import counts too
        "server/__init__.py": "",
        "server/service.py": "from models import student\n",  # server never imports models
        "models/__init__.py": "",
        "models/student.py": "from . import trainer\n",
        "models/trainer.py": "def g():\n    from .student import x\n",  # a cycle hidden by a lazy import
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    breaks = "\n".join(rule_breaks(tmp_path))
    assert "contract.arkit:1 imports server.service" in breaks
    assert "client.protocol:2 imports torch" in breaks
    assert "server.service:1 imports models.student" in breaks
    assert cycles(tmp_path) == [["models.student", "models.trainer"]]
