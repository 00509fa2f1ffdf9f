"""The ``tooldistill`` package's modules import one another without cycles.

A static check: every ``import`` and ``from ... import`` in ``src/tooldistill/**/*.py`` is read with
``ast``, wherever it stands (module level, inside a function, under ``if TYPE_CHECKING:``), so a
cycle that a lazy import only hides counts too.  ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg`` (a package's ``__init__`` imported on the way
to one of its modules is not an edge: every submodule would form a cycle with a package that
re-exports it).  A cycle found is printed module by module.
"""

from __future__ import annotations

import ast
import warnings
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "tooldistill"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Cycles known and left for now, each as the modules of its strongly connected component.  A
#: component found must lie within one of these (a new cycle, or one that grows, fails the test);
#: an entry whose cycle is gone is warned about (drop it then).  None today.
ALLOWED: frozenset[frozenset[str]] = frozenset()


def module_name(path: Path, root: Path = SOURCE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a (possibly relative) ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path = SOURCE) -> dict[str, set[str]]:
    """Module → the package's modules it imports, anywhere in its source."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    package = root.name
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, path.name == "__init__.py", node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in files else source)
            for target in targets:
                # the deepest module of the package the name reaches (``a.b.func`` → ``a.b``)
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and (target == package or target.startswith(package + ".")) and target != name:
                    graph[name].add(target)
    return graph


def components(graph: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(frozenset(members))
    return found


def a_cycle(graph: Mapping[str, Iterable[str]], members: frozenset[str]) -> list[str]:
    """One shortest cycle through the component's first module, as the modules in import order."""
    start = min(members)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    return sorted(members)


def describe(graph: Mapping[str, Iterable[str]], members: frozenset[str]) -> str:
    edges = "; ".join(f"{m} -> {', '.join(sorted(set(graph[m]) & members))}" for m in sorted(members))
    return f"{' -> '.join(a_cycle(graph, members))}\n    ({len(members)} modules: {edges})"


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and graph["tooldistill.match.compare"]  # the package was read
    found = components(graph)
    new = [describe(graph, c) for c in found if not any(c <= allowed for allowed in ALLOWED)]
    assert not new, "import cycles:\n" + "\n".join(new)
    gone = [sorted(a) for a in ALLOWED if not any(c <= a for c in found)]
    if gone:  # a warning, not a failure: the owners may break a cycle before this list is edited
        warnings.warn(f"allowed import cycles that are gone (drop them from ALLOWED): {gone}", stacklevel=1)


def test_the_check_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from pkg.sub.a import A\n")
    (root / "sub" / "a.py").write_text("def f():\n    from pkg.sub import b\n    return b\nA = 1\n")
    (root / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n"
    )
    (root / "sub" / "c.py").write_text("import pkg.sub.a\nimport os\nC = 1\n")
    (root / "d.py").write_text("from pkg.sub.a import A\nfrom . import sub\n")
    graph = import_graph(root)
    assert graph["pkg.sub.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.c"}
    assert graph["pkg.d"] == {"pkg.sub.a", "pkg.sub"}
    assert graph["pkg.sub.c"] == {"pkg.sub.a"}
    found = components(graph)
    assert found == [frozenset({"pkg.sub.a", "pkg.sub.b", "pkg.sub.c"})]
    assert a_cycle(graph, found[0]) == ["pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.sub.a"]


def test_public_import_paths_stay_and_the_config_needs_no_sdk() -> None:
    import importlib
    import subprocess
    import sys

    # (``tooldistill.match.compare`` is also the function the package re-exports)
    compare, verdict = (importlib.import_module(f"tooldistill.match.{m}") for m in ("compare", "verdict"))
    capture, options = (importlib.import_module(f"tooldistill.teacher.{m}") for m in ("capture", "options"))
    assert compare.Verdict is verdict.Verdict and compare.ordinal is verdict.ordinal
    assert capture.CaptureConfig is options.CaptureConfig and capture.ClaudeSettings is options.ClaudeSettings
    # the pipeline config (with its teacher section) loads without the Anthropic SDK
    code = (
        "import sys, tooldistill.config, tooldistill.teacher.options; "
        "sys.exit('anthropic' in sys.modules or 'tooldistill.teacher.capture' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
