"""No import cycles between the project's modules, counting every import statement (module level, inside
functions, under TYPE_CHECKING): a cycle means two modules each know the other, i.e. one concern in two places."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lab", "sweeps", "analysis", "app", "tracking", "hydra_plugins")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that ``path`` imports (a ``from pkg import mod`` names the submodule when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    modules = project_modules()
    known = set(modules)
    graph = {name: imports(path, name, known) for name, path in modules.items()}
    # A package's __init__ re-exporting its own submodules is how a package presents its API, not a cycle of
    # concerns: leave out edges from a package to its submodules.
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    assert cycles(graph) == []


def test_layers_point_one_way():
    """lab knows nothing of sweeps, analysis or app; analysis and tracking never import lab (design §2)."""
    modules = project_modules()
    known = set(modules)
    for name, path in modules.items():
        top = name.split(".")[0]
        forbidden = {"lab": ("sweeps", "analysis", "app"), "analysis": ("lab", "sweeps", "app"),
                     "tracking": ("lab", "sweeps", "analysis", "app")}.get(top, ())
        bad = sorted(t for t in imports(path, name, known) if t.split(".")[0] in forbidden)
        assert not bad, f"{name} imports {bad}"
