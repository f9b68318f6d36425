"""The core's import graph: no circles between its modules, and no private name (`_name`) imported
from another module. Read from the source with `ast`, lazy (function-level) imports included."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "denoise_core"


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = CORE) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> core modules it imports, private imports across modules as 'importer: module.name')."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(name, is_package, node)
                for a in node.names:
                    if f"{src}.{a.name}" in modules:  # `from package import module`
                        targets.append((f"{src}.{a.name}", None))
                    else:
                        targets.append((src, a.name))
            for target, imported in targets:
                if target not in modules or target == name:
                    continue
                graph[name].add(target)
                if imported and imported.startswith("_") and not imported.startswith("__"):
                    private.append(f"{name}: {target}.{imported}")
    return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circle_in_the_core():
    graph, _ = import_graph()
    assert len(graph) > 20 and graph["denoise_core.inference.api"]  # the graph was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_private_name_imported_across_modules():
    _, private = import_graph()
    assert private == [], private


def test_the_checks_see_a_circle_and_a_private_import(tmp_path):
    """The two checks on a made-up package: they must catch what they are there for."""
    pkg = tmp_path / "denoise_core"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import _hidden\n")
    (pkg / "c.py").write_text("import denoise_core.a\n_hidden = 1\n")
    graph, private = import_graph(pkg)
    assert find_cycle(graph) == ["denoise_core.a", "denoise_core.sub.b", "denoise_core.c", "denoise_core.a"]
    assert private == ["denoise_core.sub.b: denoise_core.c._hidden"]


def test_training_is_not_imported_when_denoising():
    """`photos` and the rest of `training` stay out of what denoise-batch and the worker load."""
    graph, _ = import_graph()
    runtime = {"denoise_core", "denoise_core.worker", "denoise_core.raw.denoise"}
    seen: set[str] = set()
    todo = list(runtime)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert not {m for m in seen if m.startswith("denoise_core.training")}, sorted(seen)
