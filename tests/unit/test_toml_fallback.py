"""TOML is parsed through genodl_core.toml: tomllib where Python has it, else tomli."""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import genodl_core.spec as spec
import genodl_core.toml as toml

REPO = Path(__file__).resolve().parents[2]


class _FakeDecodeError(ValueError):
    pass


def _fake_tomli() -> types.ModuleType:
    fake = types.ModuleType("tomli")
    fake.loads = lambda text: {"parsed_by": "tomli", "text": text}
    fake.TOMLDecodeError = _FakeDecodeError
    return fake


def test_tomli_stands_in_when_tomllib_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails
    monkeypatch.setitem(sys.modules, "tomli", _fake_tomli())
    try:
        importlib.reload(toml)
        assert toml.loads("a = 1") == {"parsed_by": "tomli", "text": "a = 1"}
        assert toml.TOMLDecodeError is _FakeDecodeError
        # Readers of TOML files go through the helper, so they use the fallback too.
        (tmp_path / "t.toml").write_text("seed = 1\n")
        assert spec.read_table(tmp_path / "t.toml")["parsed_by"] == "tomli"
    finally:
        monkeypatch.undo()
        importlib.reload(toml)
    if sys.version_info >= (3, 11):
        import tomllib

        assert toml.loads is tomllib.loads and toml.TOMLDecodeError is tomllib.TOMLDecodeError
    assert toml.loads("a = 1") == {"a": 1}


def test_no_other_module_imports_a_toml_parser():
    direct = []
    for folder in ("genodl_core", "workflows", "site_configs", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path in (Path(toml.__file__).resolve(), Path(__file__).resolve()):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n.split(".")[0] in ("tomllib", "tomli") for n in names):
                    direct.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not direct, "import genodl_core.toml instead: " + ", ".join(direct)
