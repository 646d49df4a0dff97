"""Rules of the code base, checked: no library imports in backprop/, lint, CI runs the README's command."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Host-side file I/O may use NumPy directly, in this package only (see DEVELOPERS.md).
HOST_IO_PACKAGE = "backprop/host_io/"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_backprop_does_not_import_array_libraries():
    offenders = []
    for path in sorted((ROOT / "backprop").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        forbidden = {"cupy", "cupyx", "torch"} | (set() if relative.startswith(HOST_IO_PACKAGE) else {"numpy"})
        bad = _imported_modules(path) & forbidden
        if bad:
            offenders.append(f"{relative}: {sorted(bad)}")
    assert not offenders, "array libraries imported outside backends/: " + "; ".join(offenders)


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "backprop", "backends", "tests", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _readme_block(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"{re.escape(title)}.*?```(?:sh|bash)?\n(.*?)```", readme, re.S)
    assert match, f"README has no code block after {title!r}"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_block("Run the tests")
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert command in ci_script, "the README's test command and .ci/run have drifted apart"


def test_the_readme_python_example_runs_and_updates_the_weights(monkeypatch):
    """The "In Python" quickstart is run as written (on NumPy, wherever this runs): it must not rot as the API
    moves, and its step must change the weights."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## In Python\s*```python\n(.*?)```", readme, re.S)
    assert match, "README has no Python block under '## In Python'"
    code = match.group(1).replace('bp.get_backend("auto")', 'bp.get_backend("numpy")')
    namespace: dict = {}
    monkeypatch.setattr("builtins.print", lambda *args, **kwargs: None)
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert namespace["loss"].shape == ()
    weight = model.named_parameters()["0.weight"]
    assert weight.grad is not None and weight.grad.shape == weight.value.shape
    before = namespace["bp"].mlp([64, 256, 128, 10], activation_name="relu", seed=0,
                                 backend=namespace["backend"]).named_parameters()["0.weight"].value
    assert not (before == weight.value).all(), "the README's optimizer step left the first layer's weights unchanged"
