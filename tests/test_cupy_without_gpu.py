"""The CuPy backend, checked with CuPy installed and no GPU (issue 13: "check the backend without a device").

The backend module imports, its probe reports the missing driver in one clear line, and every ``cupy``
attribute its code uses exists in the installed CuPy, the version pinned in the ``gpu-ci`` extra (a renamed or
removed CuPy function fails here, not on the first GPU). Needs CuPy (``pip install -e ".[gpu-ci]"``); skipped
with that reason without it.
"""

from __future__ import annotations

import ast
import importlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends import BackendUnavailable, cupy_backend

ROOT = Path(__file__).resolve().parents[1]
# The modules whose CuPy calls are checked, and the names under which they reach CuPy.
CUPY_MODULES = ["backends/cupy_backend.py", "backends/cupy_cells.py", "backends/cuda_kernels.py",
                "backends/nvrtc_check.py"]
NCCL_MODULE = "backends/nccl.py"


@pytest.fixture(scope="module")
def cupy():
    return pytest.importorskip("cupy", reason="CuPy is not installed (pip install -e '.[gpu-ci]')")


def _pinned_cupy() -> tuple[str, str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for requirement in extras["gpu-ci"]:
        match = re.fullmatch(r"(cupy-cuda\d+x)==([\w.]+)", requirement.strip())
        if match:
            return match.group(1), match.group(2)
    raise AssertionError("the gpu-ci extra pins no cupy-cudaXXx==VERSION")


def test_the_installed_cupy_is_the_pinned_one(cupy):
    from importlib import metadata

    name, version = _pinned_cupy()
    assert metadata.version(name) == version == cupy.__version__


def test_the_probe_reports_the_missing_driver_in_one_line(cupy):
    if cupy_backend.nvidia_driver_loads():
        pytest.skip("an NVIDIA driver is installed here: this checks a machine without one")
    with pytest.raises(BackendUnavailable) as info:
        cupy_backend.load("0")
    reason = info.value.reason
    assert "\n" not in reason
    assert reason.startswith("no NVIDIA driver is visible (libcuda cannot be loaded; in Docker, run with --gpus "
                             "all); CUDA said: "), reason


def test_array_api_compat_wraps_this_cupy(cupy):
    xp = importlib.import_module("array_api_compat.cupy")
    assert xp.float32 is cupy.float32 and callable(xp.concat)


# -- every cupy attribute the code uses exists ---------------------------------------------------------------------

@dataclass(frozen=True)
class Instance:
    """An object of class ``cls`` (what calling the class, or a function known to return one, gives)."""

    cls: type


def returns(cupy) -> dict[object, type]:
    """What the few CuPy functions whose results the code uses return (a class each)."""
    return {cupy.get_default_memory_pool: cupy.cuda.MemoryPool, cupy.cuda.get_current_stream: cupy.cuda.Stream}


class CupyUses(ast.NodeVisitor):
    """Resolve, in one module, every attribute chain that starts from CuPy (``cupy.x.y``, ``self._cupy.x``, a name
    bound to ``cupy.random.RandomState(...)``, ...) against the installed CuPy; collect what does not exist.

    Names bound by imports and assignments anywhere in the module count everywhere in it (the modules are small,
    and a name means one thing in each)."""

    def __init__(self, cupy, import_module=importlib.import_module):
        self.cupy, self.import_module = cupy, import_module
        self.bindings: dict[str, object] = {"cupy": cupy}
        self.returns = returns(cupy)
        self.checked: set[str] = set()
        self.missing: list[str] = []

    def bind(self, tree):
        for _ in range(3):  # a binding may use one made later in the file
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] in ("cupy", "cupyx", "cupy_backends"):
                            module = self.import_module(alias.name)
                            self.bindings[alias.asname or alias.name.split(".")[0]] = (
                                module if alias.asname else self.import_module(alias.name.split(".")[0]))
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                        node.module.split(".")[0] in ("cupy", "cupyx", "cupy_backends"):
                    for alias in node.names:
                        value = getattr(self.import_module(node.module), alias.name, None)
                        if value is None:
                            value = self.import_module(f"{node.module}.{alias.name}")
                        self.bindings[alias.asname or alias.name] = value
                elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                    value = self.resolve(node.value, record=False)
                    if value is not None:
                        self.bindings[_target_name(node.targets[0])] = value

    def resolve(self, node, record=True):
        """The object ``node`` stands for, when it comes from CuPy; None when it does not (or cannot be told)."""
        if isinstance(node, ast.Name):
            return self.bindings.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self.bindings.get(f"self.{node.attr}")
            base = self.resolve(node.value, record)
            if base is None:
                return None
            owner = base.cls if isinstance(base, Instance) else base
            label = ast.unparse(node)
            value = getattr(owner, node.attr, _MISSING)
            if value is _MISSING and isinstance(owner, type(importlib)):
                try:
                    value = self.import_module(f"{owner.__name__}.{node.attr}")
                except ImportError:
                    pass
            if record:
                self.checked.add(label)
                if value is _MISSING:
                    self.missing.append(f"line {node.lineno}: {label}")
            if value is _MISSING or isinstance(base, Instance) and callable(value):
                return None  # a method of an instance: what it returns is not followed
            return value
        if isinstance(node, ast.Call):
            function = self.resolve(node.func, record)
            if isinstance(function, type):
                return Instance(function)
            if function in self.returns:
                return Instance(self.returns[function])
        return None

    def visit_Attribute(self, node):
        self.resolve(node)
        self.generic_visit(node)


_MISSING = object()


def _target_name(target) -> str:
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
        return f"self.{target.attr}"
    return target.id if isinstance(target, ast.Name) else ""


def cupy_uses(path: Path, cupy) -> CupyUses:
    tree = ast.parse(path.read_text(), filename=str(path))
    uses = CupyUses(cupy)
    uses.bindings["self._cupy"] = cupy
    uses.bind(tree)
    uses.visit(tree)
    return uses


@pytest.mark.parametrize("module", CUPY_MODULES)
def test_every_cupy_attribute_the_backend_uses_exists(cupy, module):
    uses = cupy_uses(ROOT / module, cupy)
    assert not uses.missing, f"{module} uses what CuPy {cupy.__version__} lacks: " + "; ".join(uses.missing)
    if module == "backends/cupy_backend.py":  # the check follows the backend's objects, not only module names
        for call in ("cupy.cuda.runtime.getDeviceProperties", "self._cupy.cuda.runtime.memGetInfo",
                     "self._rng.standard_normal", "self._cupy_device.synchronize", "pool.free_bytes",
                     "cupyx.scatter_add", "cupy.random.RandomState"):
            assert call in uses.checked, (call, sorted(uses.checked))


def test_every_nccl_attribute_the_all_reduce_uses_exists(cupy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CuPy's own warning that it cannot load NCCL
        nccl = importlib.import_module("cupy.cuda.nccl")
    if not nccl.available:
        pytest.skip("NCCL is not installed here (pip install nvidia-nccl-cu12): its bindings cannot be loaded")
    uses = cupy_uses(ROOT / NCCL_MODULE, cupy)
    assert not uses.missing, "; ".join(uses.missing)
    assert {"nccl.NcclCommunicator", "self.comm.allReduce"} <= uses.checked


def test_the_attribute_check_finds_what_cupy_lacks(cupy, tmp_path):
    """Not vacuous: a misspelt function, a removed class method and a wrong module are each reported."""
    module = tmp_path / "broken.py"
    module.write_text(
        "import cupy\n"
        "import cupyx\n"
        "class B:\n"
        "    def __init__(self):\n"
        "        self._cupy = cupy\n"
        "        self._rng = cupy.random.RandomState(0)\n"
        "    def f(self):\n"
        "        self._cupy.cuda.runtime.getDeviceCounts()\n"
        "        self._rng.random_sampel((2,))\n"
        "        pool = cupy.get_default_memory_pool()\n"
        "        pool.free_bites()\n"
        "        cupyx.scatter_plus\n"
        "        cupy.cuda.runtime.getDeviceCount()\n")
    uses = cupy_uses(module, cupy)
    assert uses.missing == ["line 8: self._cupy.cuda.runtime.getDeviceCounts", "line 9: self._rng.random_sampel",
                            "line 11: pool.free_bites", "line 12: cupyx.scatter_plus"]
    assert "cupy.cuda.runtime.getDeviceCount" in uses.checked
