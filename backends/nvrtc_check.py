"""Compile every registered CUDA kernel with NVRTC, without a GPU: ``python -m backends.nvrtc_check``.

CuPy compiles a kernel on the first GPU that runs it, so a kernel with an undefined identifier or a type error
would fail there, in front of a user. NVRTC, the CUDA runtime compiler, needs no device: this module compiles
the source of every kernel in ``backends/cuda_kernels.py`` to PTX for each architecture in ``ARCHITECTURES``,
with the headers and options CuPy itself compiles with, and reports every compile error with NVRTC's log.
``tests/test_cuda_kernels.py`` runs it in CI.

What is compiled: a ``RawSource`` as it stands (as ``cupy.RawModule`` compiles it), then each of its declared
kernels is looked up in the PTX; an ``ElementwiseSource`` as the source CuPy generates for it, for each of its
``dtypes``. That generation is CuPy's own code generator (``cupy._core._kernel``), an internal API of the CuPy
version pinned in the ``gpu-ci`` extra: a CuPy that changes it fails here with a message saying so.

Needs CuPy and NVRTC (``pip install -e ".[gpu-ci]"``: ``cupy-cuda12x`` and ``nvidia-cuda-nvrtc-cu12``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import cuda_kernels
from .cuda_kernels import ElementwiseSource, RawSource

#: Ampere (A100) and Hopper (H100/H200); PTX for compute_80 also runs, JIT-compiled, on later GPUs.
ARCHITECTURES = ("compute_80", "compute_90")


class KernelCompileError(Exception):
    """A registered kernel that does not compile (or lacks a kernel it declares); the message holds NVRTC's log."""


@dataclass(frozen=True)
class Compiled:
    name: str  # the registry's name
    arch: str
    variant: str  # "" for raw sources; the dtype for elementwise kernels
    ptx: str


def nvrtc() -> Any:
    """CuPy's NVRTC bindings (``KernelCompileError`` when CuPy or the NVRTC library is missing)."""
    try:
        from cupy_backends.cuda.libs import nvrtc as bindings  # lazy: optional library (CuPy)

        bindings.getVersion()  # loads libnvrtc
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KernelCompileError(f"NVRTC is not available ({text}); pip install -e '.[gpu-ci]'") from None
    return bindings


def cupy_options(options: tuple[str, ...] = ()) -> list[str]:
    """The compile options CuPy adds to a kernel's own: its include directories (CuPy's headers, the CCCL
    headers it bundles, a CUDA toolkit's where one is found), C++17, flush-to-zero, device code by default."""
    from cupy._core import core  # lazy: optional library (CuPy)

    return [*core.assemble_cupy_compiler_options(tuple(options)), "-ftz=true", "--device-as-default-execution-space"]


def compile_to_ptx(code: str, arch: str, options: list[str], filename: str) -> str:
    """PTX of CUDA source ``code`` for ``arch`` (``compute_80``); ``KernelCompileError`` with NVRTC's log."""
    bindings = nvrtc()
    program = bindings.createProgram(code, filename, [], [])
    try:
        try:
            bindings.compileProgram(program, [*options, f"-arch={arch}"])
        except bindings.NVRTCError as exc:
            log = bindings.getProgramLog(program).strip()
            raise KernelCompileError(f"{filename} does not compile for {arch} ({exc}):\n{log}") from None
        ptx = bindings.getPTX(program)
    finally:
        bindings.destroyProgram(program)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def elementwise_code(source: ElementwiseSource, dtype: str) -> str:
    """The CUDA source CuPy generates for ``source`` when called on 1-d contiguous arrays of ``dtype`` (and
    Python numbers for its ``scalars``), with CuPy's header lines first, as ``ElementwiseKernel`` compiles it."""
    # lazy: optional library (CuPy; NumPy beside it, as the dtypes' names)
    import cupy
    import numpy

    try:
        from cupy._core import _carray, _kernel, _scalar, core  # lazy: optional library (CuPy)

        kernel = cupy.ElementwiseKernel(source.in_params, source.out_params, source.operation, source.name,
                                        preamble=source.preamble, options=source.options)
        params = kernel.params
        ndarray, scalar, indexer = 1, 3, 2  # cupy._core._kernel._ArgKind
        arginfos, placeholders = [], {}
        for param in params:
            if param.name == "_ind":
                arginfos.append(_kernel._ArgInfo(indexer, _carray.Indexer, None, 1, True, True))
                continue
            concrete = param.dtype is not None
            if not concrete:
                placeholders[param.ctype] = numpy.dtype(dtype)
            param_dtype = param.dtype if concrete else numpy.dtype(dtype)
            if param.name in source.scalars:
                arginfos.append(_kernel._ArgInfo(scalar, _scalar.CScalar, param_dtype, 0, True, True))
            else:
                arginfos.append(_kernel._ArgInfo(ndarray, cupy.ndarray, param_dtype, 1, True, True))
        type_map = _kernel._TypeMap(tuple(placeholders.items()))
        code = _kernel._get_elementwise_kernel_code(tuple(arginfos), type_map, params, kernel.operation,
                                                    kernel.name, kernel.preamble)
        headers = "".join(f"#include <{header}>\n" for header in core._cupy_header_list)
    except (AttributeError, TypeError, ImportError) as exc:
        raise KernelCompileError(f"this CuPy ({cupy.__version__}) generates ElementwiseKernel source differently "
                                 f"than the pinned one (the gpu-ci extra): {exc}") from None
    return headers + code


def check(source: RawSource | ElementwiseSource,
          architectures: Sequence[str] = ARCHITECTURES) -> list[Compiled]:
    """Compile ``source`` for each architecture (and each dtype of an elementwise kernel)."""
    results = []
    for arch in architectures:
        if isinstance(source, RawSource):
            ptx = compile_to_ptx(source.code, arch, cupy_options(source.options), f"{source.name}.cu")
            missing = [k for k in source.kernels if not re.search(rf"\.entry\s+{re.escape(k)}\s*\(", ptx)]
            if missing:
                raise KernelCompileError(f"{source.name}.cu compiles for {arch} but has no kernel named "
                                         f"{', '.join(missing)} (not __global__, or not extern \"C\", so its "
                                         f"name is C++-mangled)")
            results.append(Compiled(source.name, arch, "", ptx))
        else:
            for dtype in source.dtypes:
                code = elementwise_code(source, dtype)
                ptx = compile_to_ptx(code, arch, cupy_options(source.options), f"{source.name}[{dtype}].cu")
                results.append(Compiled(source.name, arch, dtype, ptx))
    return results


def check_all(architectures: Sequence[str] = ARCHITECTURES) -> tuple[list[Compiled], list[KernelCompileError]]:
    """Every registered kernel: what compiled, and every error (the check goes on past a failure)."""
    compiled, errors = [], []
    for source in cuda_kernels.KERNELS.values():
        try:
            compiled += check(source, architectures)
        except KernelCompileError as exc:
            errors.append(exc)
    return compiled, errors


def main() -> int:
    try:
        nvrtc()
    except KernelCompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    compiled, errors = check_all()
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{len(cuda_kernels.KERNELS)} registered CUDA kernel(s); {len(compiled)} compiled to PTX for "
          f"{', '.join(ARCHITECTURES)}; {len(errors)} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
