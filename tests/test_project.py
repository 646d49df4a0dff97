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
#: Libraries whose knowledge belongs in backends/: array libraries, the device runtimes, and what tunes them.
LIBRARY_SPECIFIC = {"numpy", "cupy", "cupyx", "torch", "jax", "jaxlib", "array_api_strict", "mpi4py",
                    "threadpoolctl"}
COMPUTED_IMPORT = "importlib of a computed name"
#: The exceptions in backprop/, each with its reason: what may be imported where (a folder ends in "/").
ALLOWED = {
    # Host-side files: datasets are read, model files written and plots drawn in NumPy on the host; arrays
    # reach a device through backend.from_host and come back through backend.to_host.
    "numpy": ("backprop/data/", "backprop/io/", "backprop/plots/"),
    # MPI between processes carries host buffers; it is not an array library, and no backend owns it.
    "mpi4py": ("backprop/distributed/communicator.py",),
    # importlib.import_module of a name the rule cannot read: the example modules of the examples' own table.
    COMPUTED_IMPORT: ("backprop/examples/__init__.py",),
}


def _allowed(library: str, relative: str) -> bool:
    return any(relative == place or (place.endswith("/") and relative.startswith(place))
               for place in ALLOWED.get(library, ()))


def _library_offences(relative: str, source: str) -> list[str]:
    """What ``source`` (the file ``relative``) imports that it may not, by statement or by importlib."""
    tree = ast.parse(source, filename=relative)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == "import_module"
                                             or getattr(node.func, "id", None) in ("import_module", "__import__")):
            argument = node.args[0] if node.args else None
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                found.append((argument.value.split(".")[0], node.lineno))
            else:  # a name the rule cannot read could hide any library
                found.append((COMPUTED_IMPORT, node.lineno))
    return [f"{relative}:{line}: {library}" for library, line in found
            if (library in LIBRARY_SPECIFIC or library == COMPUTED_IMPORT) and not _allowed(library, relative)]


def test_library_specific_code_lives_in_backends():
    offenders = []
    for path in sorted((ROOT / "backprop").rglob("*.py")):
        offenders += _library_offences(path.relative_to(ROOT).as_posix(), path.read_text())
    assert not offenders, "library-specific imports outside backends/ and the allow-list: " + "; ".join(offenders)


@pytest.mark.parametrize("source, offence", [
    ("import numpy as np", "numpy"),
    ("from torch import nn", "torch"),
    ("import jax.numpy as jnp", "jax"),
    ("from mpi4py import MPI", "mpi4py"),
    ("import importlib\nimportlib.import_module('cupy.cuda.nccl')", "cupy"),
    ("__import__('cupyx')", "cupyx"),
    ("import importlib\nname = 'cupy'\nimportlib.import_module(name)", COMPUTED_IMPORT),
    ("def f():\n    from threadpoolctl import threadpool_limits", "threadpoolctl"),
])
def test_the_library_rule_sees_every_kind_of_import(source, offence):
    offences = _library_offences("backprop/layers/some_layer.py", source)
    assert len(offences) == 1 and offences[0].endswith(f": {offence}"), offences


def test_the_allow_list_lets_host_packages_use_numpy_and_nothing_more():
    assert _library_offences("backprop/data/csv_files.py", "import numpy as np") == []
    assert _library_offences("backprop/io/model_files.py", "import numpy as np") == []
    assert _library_offences("backprop/plots/training.py", "import numpy as np") == []
    assert _library_offences("backprop/data/csv_files.py", "import torch") == ["backprop/data/csv_files.py:1: torch"]
    assert _library_offences("backprop/database.py", "import numpy") == ["backprop/database.py:1: numpy"]
    for place in ALLOWED["numpy"]:
        assert (ROOT / place).is_dir(), f"the allow-list names {place}, which does not exist"


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
    headings = re.findall(r"^## (.*)$", readme, re.M)
    assert headings[:2] == ["Set up on a fresh machine", "In Python"], "the quickstart follows the set-up commands"
    match = re.search(r"## In Python\n[^#]*?```python\n(.*?)```", readme, re.S)
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


def test_backends_never_import_backprop():
    """backends/ is the lower layer: backprop/ uses it, never the other way round (a backend's errors are
    ``BackendError``s, which the CLI reports in one line as it does backprop's)."""
    offenders = []
    for path in sorted((ROOT / "backends").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for name in names
                          if name.split(".")[0] == "backprop"]
    assert not offenders, "backends/ imports backprop: " + "; ".join(offenders)


def test_distributed_code_never_branches_on_a_library_name():
    """What differs between array libraries is a backend capability (thread limits, the all-reduce, the
    devices ranks spread over), never ``backend.library == "cupy"`` in backprop/distributed/."""
    offenders = []
    for path in sorted((ROOT / "backprop" / "distributed").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Compare) and any(isinstance(side, ast.Attribute) and side.attr == "library"
                                                     for side in [node.left, *node.comparators]):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "a branch on backend.library: " + "; ".join(offenders)


def _package_files():
    return sorted(list((ROOT / "backprop").rglob("*.py")) + list((ROOT / "backends").rglob("*.py")))


def _unannotated_public_functions(relative: str, source: str) -> list[str]:
    """Public functions and methods of ``source`` whose parameters or return lack a type annotation."""
    missing = []

    def visit(node: ast.AST, prefix: str, public: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", public and not child.name.startswith("_"))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                dunder = child.name.startswith("__") and child.name.endswith("__")
                if not public or (child.name.startswith("_") and not dunder):
                    continue
                arguments = child.args.posonlyargs + child.args.args + child.args.kwonlyargs
                arguments += [a for a in (child.args.vararg, child.args.kwarg) if a is not None]
                unannotated = [a.arg for a in arguments if a.annotation is None and a.arg not in ("self", "cls")]
                if child.returns is None and child.name != "__init__":
                    unannotated.append("return")
                if unannotated:
                    missing.append(f"{relative}:{child.lineno} {prefix}{child.name} ({', '.join(unannotated)})")

    visit(ast.parse(source, filename=relative), "", True)
    return missing


def test_every_public_function_is_annotated():
    missing = []
    for path in _package_files():
        missing += _unannotated_public_functions(path.relative_to(ROOT).as_posix(), path.read_text())
    assert not missing, f"{len(missing)} public functions without full annotations: " + "; ".join(missing[:20])


def test_the_annotation_rule_sees_parameters_returns_and_methods():
    source = ("def f(x: int) -> int: ...\ndef g(x): ...\ndef _private(x): ...\n"
              "class A:\n    def __init__(self, n: int): ...\n    def m(self, y: int): ...\n"
              "class _Hidden:\n    def m(self, y): ...\n")
    assert _unannotated_public_functions("m.py", source) == ["m.py:2 g (x, return)", "m.py:6 A.m (return)"]


def _unexplained_local_imports(relative: str, source: str) -> list[str]:
    """Imports inside functions with no comment saying why they are not at the top of the module: on their own
    line, or on the comment line right above their block of imports."""
    lines = source.splitlines()
    found = []
    for function in ast.walk(ast.parse(source, filename=relative)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            explained = any("#" in lines[i] for i in range(node.lineno - 1, node.end_lineno or node.lineno))
            above = node.lineno - 2
            while not explained and above >= 0:
                text = lines[above].strip()
                if text.startswith("#"):
                    explained = True
                elif text.startswith(("import ", "from ")) or text.endswith((",", "(")) or text.startswith(")"):
                    above -= 1  # another import of the same block
                    continue
                break
            if not explained:
                found.append(f"{relative}:{node.lineno}")
    return sorted(set(found))


def test_function_level_imports_say_why():
    found = []
    for path in _package_files():
        found += _unexplained_local_imports(path.relative_to(ROOT).as_posix(), path.read_text())
    assert not found, ("imports inside functions belong at the top of the module unless they are lazy on purpose "
                       "(say why in a comment): " + "; ".join(found))


def test_the_local_import_rule_accepts_a_commented_block_only():
    source = ("def f():\n    # lazy: optional library\n    import torch\n    import jax\n\n"
              "def g():\n    x = 1\n    import os\n\ndef h():\n    import re  # lazy: start-up time\n")
    assert _unexplained_local_imports("m.py", source) == ["m.py:8"]


def test_mypy_finds_nothing(tmp_path):
    """The type check of backprop/ and backends/ ([tool.mypy] in pyproject.toml), as CI runs it."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_packages_ship_their_annotations():
    """PEP 561: ``py.typed`` in each package, and in the package data so that a wheel carries it."""
    config = (ROOT / "pyproject.toml").read_text()
    for package in ("backprop", "backends"):
        assert (ROOT / package / "py.typed").is_file(), f"{package}/py.typed is missing"
        assert f'"{package}" = ["py.typed"]' in config, f"{package}/py.typed is not in the package data"
