"""genodl_core is a plain library: it must import and run a spec without Parsl installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_core_imports_with_parsl_blocked():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "parsl" or name.startswith("parsl."):
                    raise ImportError("parsl is blocked in this test")
        sys.meta_path.insert(0, Block())
        import genodl_core, genodl_core.catalog, genodl_core.spec, genodl_core.records
        import genodl_core.training.trial
        assert not any(m == "parsl" or m.startswith("parsl.") for m in sys.modules)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
