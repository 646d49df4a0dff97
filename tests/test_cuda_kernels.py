"""Every CUDA kernel the project ships compiles with NVRTC, checked on the CPU (issue 13: "compile every kernel").

``backends/cuda_kernels.py`` is the one place kernel sources live, and ``backends/nvrtc_check.py`` compiles them
to PTX for compute_80 and compute_90 without a GPU. These tests need CuPy and the NVRTC wheel (the ``gpu-ci``
extra); without them they are skipped with that reason, except the one that keeps every kernel in the registry.
The first test compiles the project's own kernels (the fused and multi-tensor capabilities of the CuPy
backend); the harness itself is tested on kernels made for the test: good ones compile and are found in the
PTX, broken ones fail with NVRTC's message.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from backends import cuda_kernels
from backends.cuda_kernels import ElementwiseSource, RawSource

ROOT = Path(__file__).resolve().parents[1]
KERNEL_CLASSES = {"RawKernel", "RawModule", "ElementwiseKernel", "ReductionKernel"}
ALLOWED = {"backends/cuda_kernels.py", "backends/nvrtc_check.py"}  # the registry, and the check that compiles it


def _nvrtc_check():
    from backends import nvrtc_check

    try:
        nvrtc_check.nvrtc()
    except nvrtc_check.KernelCompileError as exc:
        pytest.skip(f"the kernel compile check needs CuPy and NVRTC (pip install -e '.[gpu-ci]'): {exc}")
    return nvrtc_check


AXPY = RawSource("test_axpy", r'''
extern "C" __global__ void axpy(const float a, const float* x, float* y, const long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}''', kernels=("axpy",))

SCALE_ADD = ElementwiseSource("test_scale_add", "T x, T y, float32 alpha", "T z", "z = (T)alpha * x + y",
                              dtypes=("float32", "float64"), scalars=("alpha",))


@pytest.fixture
def registry(monkeypatch):
    """An empty kernel registry for the test (the project's own kernels are checked by the first test); returns
    a function that registers the given sources in it."""
    monkeypatch.setattr(cuda_kernels, "KERNELS", {})

    def use(*sources):
        for source in sources:
            cuda_kernels.register(source)

    return use


def test_every_registered_kernel_compiles_for_each_architecture():
    assert cuda_kernels.KERNELS, "the CuPy backend's kernels are registered in backends/cuda_kernels.py"
    nvrtc_check = _nvrtc_check()
    compiled, errors = nvrtc_check.check_all()
    assert not errors, "\n\n".join(str(e) for e in errors)
    assert {(c.name, c.arch) for c in compiled} == {(name, arch) for name in cuda_kernels.KERNELS
                                                    for arch in nvrtc_check.ARCHITECTURES}


def test_the_check_compiles_raw_and_elementwise_kernels_to_ptx(registry):
    nvrtc_check = _nvrtc_check()
    registry(AXPY, SCALE_ADD)
    compiled, errors = nvrtc_check.check_all()
    assert errors == []
    archs = ("compute_80", "compute_90")
    assert sorted((c.name, c.arch, c.variant) for c in compiled) == sorted(
        [("test_axpy", arch, "") for arch in archs]
        + [("test_scale_add", arch, dtype) for arch in archs for dtype in ("float32", "float64")])
    for c in compiled:
        assert f".target sm_{c.arch[-2:]}" in c.ptx
        assert (".entry axpy(" if c.name == "test_axpy" else ".entry test_scale_add(") in c.ptx
    scale_add = {c.variant: c.ptx for c in compiled if c.name == "test_scale_add" and c.arch == "compute_80"}
    assert re.search(r"fma\.rn(\.ftz)?\.f32", scale_add["float32"])  # each dtype's own code
    assert re.search(r"fma\.rn\.f64", scale_add["float64"]) and not re.search(r"\.f64", scale_add["float32"])


def test_an_undefined_identifier_fails_with_nvrtcs_message(registry):
    nvrtc_check = _nvrtc_check()
    registry(RawSource("test_typo", AXPY.code.replace("a * x[i]", "alpah * x[i]"), kernels=("axpy",)),
             ElementwiseSource("test_typo_elementwise", "T x", "T y", "y = x * gain"), AXPY)
    compiled, errors = nvrtc_check.check_all()
    assert [c.name for c in compiled] == ["test_axpy", "test_axpy"]  # the check goes on past the failures
    raw, elementwise = (str(e) for e in errors)
    assert raw.startswith("test_typo.cu does not compile for compute_80 (NVRTC_ERROR_COMPILATION")
    assert 'identifier "alpah" is undefined' in raw
    assert elementwise.startswith("test_typo_elementwise[float32].cu does not compile for compute_80")
    assert 'identifier "gain" is undefined' in elementwise


def test_a_declared_kernel_missing_from_the_ptx_fails(registry):
    nvrtc_check = _nvrtc_check()
    mangled = AXPY.code.replace('extern "C" ', "")  # compiles, but the kernel's name is C++-mangled
    registry(RawSource("test_mangled", mangled, kernels=("axpy",)))
    _, errors = nvrtc_check.check_all()
    assert len(errors) == 1 and "test_mangled.cu compiles for compute_80 but has no kernel named axpy" in str(errors[0])


def test_registered_kernels_build_their_cupy_objects_without_a_gpu(registry):
    cupy = pytest.importorskip("cupy", reason="needs CuPy (pip install -e '.[gpu-ci]')")
    registry(AXPY, SCALE_ADD)
    cuda_kernels.kernel.cache_clear()
    try:
        assert isinstance(cuda_kernels.kernel("test_axpy"), cupy.RawModule)
        elementwise = cuda_kernels.kernel("test_scale_add")
        assert isinstance(elementwise, cupy.ElementwiseKernel) and elementwise.name == "test_scale_add"
    finally:
        cuda_kernels.kernel.cache_clear()
    with pytest.raises(ValueError, match="already registered"):
        cuda_kernels.register(AXPY)


def kernels_built_outside_the_registry(root: Path) -> list[str]:
    """``path:line`` of every use of a CuPy kernel class in backends/, backprop/ and benchmarks/ under ``root``,
    outside the registry and its check."""
    offenders = []
    for folder in ("backends", "backprop", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            if path.relative_to(root).as_posix() in ALLOWED or not any(k in text for k in KERNEL_CLASSES):
                continue
            for node in ast.walk(ast.parse(text, filename=str(path))):
                name = (node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name)
                        else None)
                imported = {alias.name for alias in node.names} if isinstance(node, ast.ImportFrom) else set()
                if name in KERNEL_CLASSES or KERNEL_CLASSES & imported:
                    offenders.append(f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return offenders


def test_no_cuda_kernel_is_built_outside_the_registry():
    """A kernel built elsewhere would escape the compile check: only backends/cuda_kernels.py may build one."""
    offenders = kernels_built_outside_the_registry(ROOT)
    assert not offenders, ("CUDA kernels built outside backends/cuda_kernels.py (register them there, so CI "
                           "compiles them): " + ", ".join(offenders))


def test_the_scan_for_kernels_outside_the_registry_finds_one(tmp_path):
    (tmp_path / "backends").mkdir()
    (tmp_path / "backends" / "cuda_kernels.py").write_text("import cupy\nk = cupy.RawModule(code='')\n")
    (tmp_path / "backends" / "fused.py").write_text("import cupy\n\nk = cupy.RawKernel('...', 'f')\n")
    (tmp_path / "backprop").mkdir()
    (tmp_path / "backprop" / "step.py").write_text("from cupy import ElementwiseKernel\n")
    assert kernels_built_outside_the_registry(tmp_path) == ["backends/fused.py:3", "backprop/step.py:1"]
