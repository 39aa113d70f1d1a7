"""The package's imports point one way: no cycle between modules, and no module imports
a package of a higher layer (cli → pipeline, spectral_labels → diagnostics → training / inference /
interop → io / compute / artifact → quality / simulation → data / models → config →
errors / presets / labels / stats / threads / runtime / words). Every import counts, also those inside
functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import kielnet

SRC = Path(kielnet.__file__).resolve().parent
#: layer of each top-level module or subpackage of kielnet (higher imports lower)
LAYERS = {
    "errors": 0, "presets": 0, "labels": 0, "stats": 0, "words": 0, "cluster": 0, "threads": 0, "runtime": 0,
    "__init__": 0,
    "config": 1,
    "data": 2, "models": 2,
    "quality": 3, "simulation": 3,
    "io": 4, "compute": 4, "artifact": 4,
    "training": 5, "inference": 5, "interop": 5,
    "diagnostics": 6,
    "pipeline": 7, "spectral_labels": 7,
    "cli": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = ("kielnet",) + p.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """kielnet modules ``name`` imports (``from X import y`` counts module ``X.y`` when
    that is a module, else ``X``)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_every_package_has_a_layer():
    tops = {m.split(".")[1] for m in _modules() if "." in m}
    assert tops <= set(LAYERS), tops - set(LAYERS)


def test_no_upward_import():
    upward = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a)]
    assert not upward, "\n".join(sorted(upward))


#: module cycles allowed (by their modules); any other cycle fails
KNOWN_CYCLES: set[frozenset[str]] = set()   # none left: keep it that way


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of ``graph``, found one at a time by removing the edge that closes each."""
    graph = {k: set(v) for k, v in graph.items()}
    out = []
    while (c := _cycle(graph)) is not None:
        out.append(c)
        graph[c[-2]].discard(c[-1])
    return out


def test_no_package_cycle():
    pkgs: dict[str, set[str]] = {}
    for a, deps in _graph().items():
        top = a.split(".")[1] if "." in a else "__init__"
        pkgs.setdefault(top, set()).update(b.split(".")[1] if "." in b else "__init__" for b in deps)
    for k in pkgs:
        pkgs[k].discard(k)
    cycle = _cycle(pkgs)
    assert cycle is None, " -> ".join(cycle)


def test_no_new_module_cycle():
    new = [c for c in _cycles(_graph()) if frozenset(c) not in KNOWN_CYCLES]
    assert not new, "\n".join(" -> ".join(c) for c in new)


def test_the_checks_can_fail():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert len(_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}})) == 2
    assert _layer("kielnet.quality.embedding") < _layer("kielnet.compute.forward")
