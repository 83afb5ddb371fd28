"""The core stays usable without streamlit, and importing it has no heavy side effects."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "workbench"


def test_core_never_imports_streamlit():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "streamlit" for n in names), path


def test_importing_the_package_and_specs_loads_no_torch_or_onnxruntime():
    code = ("import sys, workbench, workbench.specs, workbench.settings, workbench.cli; "
            "print(','.join(m for m in ('torch', 'onnxruntime', 'streamlit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_no_unsafe_torch_load():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" and \
                    getattr(node.func.value, "id", "") == "torch":
                kwargs = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert kwargs.get("weights_only") is True, f"{path}:{node.lineno}"
