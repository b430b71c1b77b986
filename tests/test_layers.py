"""The package's layers (docs/architecture.md): every import of distbench (lazy ones inside functions too) points
to the module's own layer or a lower one, and no import circle exists."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# Module prefix -> layer; the longest matching prefix wins.
LAYERS = {
    "distbench": 0,
    "distbench.config": 0,
    "distbench.runtime": 0,  # the package itself: a docstring
    "distbench.runtime.stop": 0,
    "distbench.results": 0,  # the package's API: the schema and the store
    "distbench.results.schema": 0,
    "distbench.results.store": 0,
    "distbench.results.blocks": 0,
    "distbench.runtime.timing": 0,  # a leaf: torch only
    "distbench.model": 1,
    "distbench.comm": 2,
    "distbench.runtime.optim": 3,
    "distbench.runtime.data": 3,
    "distbench.runtime.checkpoint": 3,
    "distbench.runtime.engines": 3,
    "distbench.runtime.checks": 4,
    "distbench.runtime.loop": 4,
    "distbench.runtime.outcome": 4,
    "distbench.runtime.main": 4,
    "distbench.results.analysis": 5,
    "distbench.results.report": 5,
    "distbench.results.traces": 5,
    "distbench.perfmodel": 5,
    "distbench.sweep": 5,
    "distbench.cli": 6,
    "distbench.__main__": 6,
}


def modules() -> dict[str, Path]:
    found = {}
    for f in (ROOT / "distbench").rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = f
    return found


def layer(name: str) -> int:
    return LAYERS[max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)]


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the distbench modules it imports, anywhere in its file."""

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distbench"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(resolve(full if full in mods else node.module))
            elif isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names if a.name.startswith("distbench")}
        graph[name] = {t for t in found if t and t != name}
    return graph


def test_imports_point_down_the_layers():
    mods = modules()
    up = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in imports(mods).items()
        for target in targets
        if layer(target) > layer(name) and not (name.startswith(target + ".") or target.startswith(name + "."))
    ]
    assert up == []


def test_no_import_circles():
    graph = imports(modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_models_never_talk_to_process_groups():
    for name, path in modules().items():
        if name.startswith("distbench.model"):
            assert "torch.distributed" not in path.read_text(), name


# Where a process group is touched (docs/architecture.md): the engines, the taps that meter their collectives,
# and commbench, which times collectives themselves. torch.distributed.algorithms is the DDP hooks' maths
# (comm.expected borrows PowerSGD's test of whether a gradient is compressed), not a process group.
TALKERS = ("distbench.runtime.engines", "distbench.comm.taps", "distbench.perfmodel.commbench")


def test_only_the_engines_the_taps_and_commbench_talk_to_process_groups():
    def process_group_imports(path: Path) -> list[str]:
        found = []
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names if n.startswith("torch.distributed") and ".algorithms." not in n]
        return found

    talking = {name: found for name, path in modules().items() if (found := process_group_imports(path))}
    assert talking and all(name.startswith(TALKERS) for name in talking), talking


def test_at_most_eight_top_level_modules():
    top = list((ROOT / "distbench").glob("*.py"))
    assert len(top) <= 8, sorted(p.name for p in top)


def test_the_package_has_at_most_eight_top_level_modules():
    """A newcomer reads the package's top level as its table of contents (docs/architecture.md)."""
    top = sorted(
        p.stem if p.suffix == ".py" else p.name
        for p in (ROOT / "distbench").iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").exists()
    )
    assert len(top) <= 8, top
