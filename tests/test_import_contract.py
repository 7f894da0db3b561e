"""The import contract of docs/architecture.md, kept by import-linter ([tool.importlinter] in
pyproject.toml): the layout shows the flow only while nothing reaches around it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports with ``root`` (a copy of the repository's package and pyproject) first on the path."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_the_package_keeps_its_import_contract():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture()
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "kaito_runtime", tmp_path / "kaito_runtime", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("plan/memory.py", "import psutil", "The planner is pure"),
        ("plan/gpu.py", "from kaito_runtime.node import inventory", "The planner is pure"),
        ("model/catalog.py", "from kaito_runtime import weights", "The model step reads no weights"),
        ("hub/__init__.py", "from kaito_runtime.weights import store", "No import cycles"),
        ("node/skus.py", "from kaito_runtime.plan import memory", "The hub client and the node probe"),
        ("launch/supervisor.py", "from kaito_runtime.request import RuntimeRequest", "The launch step takes a plan"),
        ("launch/ports.py", "from kaito_runtime import hub", "The launch step takes a plan"),
        ("cli.py", "from kaito_runtime.types import ModelSpec", "The CLI talks to the API"),
        ("types.py", "from kaito_runtime import plan", "Only the API orders the steps"),
        ("weights/store.py", "from kaito_runtime.weights import fetch", "No import cycles"),
        ("weights/objects.py", "from kaito_runtime.model.catalog import load_catalog", "The weights step takes one rule"),
        ("launch/supervisor.py", "from kaito_runtime import observe", "Only the API wires in the launcher's own HTTP"),
        ("weights/store.py", "from kaito_runtime.observe import Phase", "Only the API wires in the launcher's own HTTP"),
        ("cli.py", "from kaito_runtime.vllm_ext import rate_limit", "The CLI talks to the API"),
        ("launch/group/launching.py", "from kaito_runtime.launch import vllm_install", "The group's calls for one launch"),
        ("launch/vllm_run.py", "from kaito_runtime.observe import Phase", "Only the API wires in the launcher's own HTTP"),
    ],
)
@pytest.mark.slow
def test_breaking_a_rule_fails_the_contract(package_copy: Path, module: str, line: str, broken: str):
    target = package_copy / "kaito_runtime" / module
    text = target.read_text()
    # after the module docstring and `from __future__`, where an import may stand
    marker = "from __future__ import annotations\n"
    assert marker in text, module
    target.write_text(text.replace(marker, f"{marker}{line}  # noqa\n", 1))
    result = lint(package_copy)
    assert result.returncode != 0, result.stdout
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout


# --- the tests keep the layout too -----------------------------------------------------------------

_TEST_STEPS = ("model", "plan", "node", "hub", "weights", "launch", "request", "objstore", "vllm_ext", "observe")
_TEST_LEAVES = ("types", "errors", "numbers", "settings", "secrets", "logs", "vllm_flags", "yaml_bounds",
                "termination", "cli_types")


def _foreign_imports(path: Path, step: str) -> list[str]:
    """The kaito_runtime modules ``path`` imports that are neither its step nor a leaf."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = ([f"kaito_runtime.{a.name}" for a in node.names] if node.module == "kaito_runtime" else [node.module])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kaito_runtime" and (len(parts) == 1 or parts[1] not in (step, *_TEST_LEAVES)):
                found.append(name)
    return found


def test_a_steps_tests_import_only_their_step_the_leaves_and_the_shared_support():
    """tests/<step>/ mirrors kaito_runtime/<step>/: its modules import that step, the leaves and
    tests.support (tests/support/steps.py lists every real part of another step they borrow)."""
    tests = REPO / "tests"
    offenders = {
        str(path.relative_to(tests)): _foreign_imports(path, path.relative_to(tests).parts[0])
        for step in _TEST_STEPS
        for path in sorted((tests / step).rglob("test_*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    assert any(offenders), "no step test found: has tests/ been moved?"


def test_the_test_rule_catches_a_crossing(tmp_path):
    crossing = tmp_path / "test_x.py"
    crossing.write_text("from kaito_runtime.weights import ensure_weights\nfrom kaito_runtime import errors\n")
    assert _foreign_imports(crossing, "model") == ["kaito_runtime.weights"]
    assert _foreign_imports(crossing, "weights") == []


def test_every_package_module_has_its_test_folder():
    """Each step package has a tests/<step>/ folder (the layout mirrors the package)."""
    package = REPO / "kaito_runtime"
    steps = sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file() and p.name not in ("presets",))
    missing = [step for step in steps if not (REPO / "tests" / step).is_dir()]
    assert missing == []
