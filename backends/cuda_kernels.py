"""Every CUDA kernel the project ships, registered in one place.

The CuPy backend gets its kernels only from here: ``kernel(name)`` builds the CuPy object (``cupy.RawModule``
or ``cupy.ElementwiseKernel``) from the registered source, once per process. ``backends/nvrtc_check.py``
compiles every registered source with NVRTC for the GPU architectures the project supports, without a GPU,
and ``tests/test_cuda_kernels.py`` runs that in CI: a kernel with an undefined identifier fails there, not on
the first GPU. A kernel built anywhere else would escape the check, so a test refuses any ``RawKernel``,
``RawModule``, ``ElementwiseKernel`` or ``ReductionKernel`` created outside this module.

No kernel is registered yet: the fused and multi-tensor capabilities of issue 13 bring the first ones, each
as a ``register(RawSource(...))`` or ``register(ElementwiseSource(...))`` line below.

CuPy is imported only when a kernel is built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class RawSource:
    """CUDA C++ source with ``extern "C" __global__`` functions: a ``cupy.RawModule``.

    ``kernels`` names the functions the backend calls (``kernel(name).get_function(k)``); the check finds each
    one in the compiled PTX, so a misspelt name or a missing ``extern "C"`` (a C++-mangled name) fails there.
    """

    name: str
    code: str
    kernels: tuple[str, ...]
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ElementwiseSource:
    """A ``cupy.ElementwiseKernel``: CuPy generates its CUDA source per argument types when first called.

    ``dtypes`` are the types its type placeholders (``T``) take in use; the check compiles the source CuPy
    generates for each (every placeholder that type). ``scalars`` names the parameters the backend passes as
    Python numbers rather than arrays (their generated code differs)."""

    name: str
    in_params: str
    out_params: str
    operation: str
    preamble: str = ""
    dtypes: tuple[str, ...] = ("float32",)
    scalars: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


KERNELS: dict[str, RawSource | ElementwiseSource] = {}


def register(source: RawSource | ElementwiseSource) -> RawSource | ElementwiseSource:
    """Add a kernel source to the registry (its ``name`` must be new)."""
    if not isinstance(source, (RawSource, ElementwiseSource)):
        raise TypeError(f"expected a RawSource or an ElementwiseSource, got {type(source).__name__}")
    if source.name in KERNELS:
        raise ValueError(f"a CUDA kernel named {source.name!r} is already registered")
    KERNELS[source.name] = source
    return source


@functools.cache
def kernel(name: str):
    """The CuPy object of registered kernel ``name``: ``cupy.RawModule`` (call ``.get_function(k)``) or
    ``cupy.ElementwiseKernel``. CuPy compiles it for the current GPU when it is first used."""
    import cupy

    source = KERNELS[name]
    if isinstance(source, RawSource):
        return cupy.RawModule(code=source.code, options=source.options)
    return cupy.ElementwiseKernel(source.in_params, source.out_params, source.operation, source.name,
                                  preamble=source.preamble, options=source.options)


# -- the kernels --------------------------------------------------------------------------------------------------
# (none yet)


__all__ = ["KERNELS", "ElementwiseSource", "RawSource", "kernel", "register"]
