"""genodl_core's modules import each other without a cycle.

The layering is: errors, registry and typed at the bottom; spec (types and validation) above
them; data sources, noise steps, training code and models above spec; catalog (which fills the
registries by importing them) above the models; the trial runner and the results at the top.
The registries name the catalogue and import it on the first lookup that needs it, so
validating a spec needs no import upwards.

The test reads every module with ``ast`` and counts every import of a genodl_core module, at
module level and deferred inside functions alike (a deferred import still runs, only later).
Imports guarded by ``if TYPE_CHECKING:`` never run and are not counted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import pytest

import genodl_core

ROOT = Path(genodl_core.__file__).resolve().parent


def _modules(root: Path) -> dict[str, Path]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _with_parents(name: str, modules: dict[str, Path]) -> list[str]:
    """``name`` and the packages above it: importing a submodule runs their ``__init__``."""
    parts = name.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if p in modules]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module name -> the modules of the package at ``root`` it imports (directly)."""
    package_name = root.name
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            for target in targets:
                if target == package_name or target.startswith(package_name + "."):
                    graph[name].update(t for t in _with_parents(target, modules) if t != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through every module that lies on a cycle (duplicates dropped)."""
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for start in sorted(graph):
        parent: dict[str, str] = {}
        queue = deque(sorted(graph[start]))
        for nxt in queue:
            parent[nxt] = start
        while queue:
            node = queue.popleft()
            if node == start:
                break
            for nxt in sorted(graph.get(node, ())):
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        if start not in parent:
            continue
        path = []
        node = parent[start]
        while node != start:
            path.append(node)
            node = parent[node]
        path = [start] + path[::-1]  # start -> ... -> last, and last imports start
        i = path.index(min(path))
        key = tuple(path[i:] + path[:i])
        if key not in seen:
            seen.add(key)
            cycles.append(list(key))
    return cycles


def _format(cycle: list[str]) -> str:
    return " -> ".join(cycle + [cycle[0]])


def test_graph_counts_every_kind_of_import(tmp_path):
    files = {
        "__init__.py": "",
        "low.py": "import os\n",
        "sub/__init__.py": "VALUE = 1\n",
        "sub/leaf.py": "",
        "mid.py": ("from pkg.sub import leaf\n"        # a module: pkg.sub.leaf (and pkg.sub)
                   "from pkg.sub import VALUE\n"       # a name: pkg.sub
                   "from typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n"
                   "    from pkg import top\n"         # never runs
                   "def later():\n"
                   "    import pkg.low\n"              # deferred, still counted
                   "    from . import low\n"),
        "top.py": "from .mid import later\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.mid"] == {"pkg", "pkg.sub", "pkg.sub.leaf", "pkg.low"}
    assert graph["pkg.top"] == {"pkg", "pkg.mid"}
    assert graph["pkg.low"] == set() and graph["pkg.sub.leaf"] == set()
    assert find_cycles(graph) == []
    (tmp_path / "pkg" / "low.py").write_text("def f():\n    from pkg.top import x\n")
    assert [_format(c) for c in find_cycles(import_graph(tmp_path / "pkg"))] == [
        "pkg.low -> pkg.top -> pkg.mid -> pkg.low"]


def test_find_cycles_names_each_cycle_once():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(_format(c) for c in find_cycles(graph)) == ["a -> b -> c -> a",
                                                              "d -> e -> d"]


def test_genodl_core_has_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in genodl_core:\n" + "\n".join(map(_format, cycles))


def test_spec_fills_the_registries_on_first_lookup():
    code = textwrap.dedent("""
        import sys
        from genodl_core.spec import spec_from_dict
        heavy = [m for m in ("genodl_core.catalog", "torch") if m in sys.modules]
        assert not heavy, heavy
        spec = spec_from_dict({"model": {"name": "nt3"}, "data": {"source": "synthetic_nt3"}})
        assert "genodl_core.catalog" in sys.modules
        assert spec.task == "classification"
        assert spec.replace(seed=3).seed == 3 and spec.replace(seed=3).trial_id != spec.trial_id
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_registry_imports_its_catalogue_on_the_first_lookup_that_needs_it(tmp_path,
                                                                           monkeypatch):
    import genodl_core.registry as registry
    from genodl_core.errors import SpecError

    widgets = registry.Registry("widget", catalog="widget_catalog_for_test")
    monkeypatch.setattr(registry, "WIDGETS", widgets, raising=False)
    (tmp_path / "widget_catalog_for_test.py").write_text(
        "from genodl_core.registry import WIDGETS\n"
        "WIDGETS.register('gear', params=dict)(len)\n"
        "WIDGETS.register('cog', params=dict)(len)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "widget_catalog_for_test", None)
    del sys.modules["widget_catalog_for_test"]  # removed again when the test ends

    widgets.register("early", params=dict)(len)
    assert widgets.get("early").fn is len and "gear" not in widgets  # nothing imported yet
    assert "widget_catalog_for_test" not in sys.modules
    assert widgets.get("gear").name == "gear"  # a miss imports the catalogue
    assert widgets.names() == ["cog", "early", "gear"]
    with pytest.raises(SpecError) as info:
        widgets.get("sprocket")
    assert info.value.allowed == ["early", "gear", "cog"]
