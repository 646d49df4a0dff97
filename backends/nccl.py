"""The gradient all-reduce between GPUs with NCCL (through ``cupy.cuda.nccl``), for the CuPy backend.

UNTESTED: written against CuPy's documented NCCL bindings, but no GPU (let alone
several) has been available to run it; the CI tests cover the MPI path on CPU
only. Importing this module does not import CuPy: that happens when a
``NcclReducer`` is created (the first all-reduce of a run on several ranks with
``--backend cupy``). It is the CuPy backend's all-reduce capability
(``CupyBackend.allreducer``): a collective between devices is library-specific
and the array API standard has none.

Setup: rank 0 makes an NCCL unique id, MPI broadcasts it (a few bytes, once),
and every rank joins the NCCL communicator with it on its own GPU (the rank's
number on its machine: ``registry.backend_for_rank``; ``visible_gpus`` counts for the CuPy
family's ``rank_devices``). Set-up problems are ``BackendSetupError``s, which the
CLI reports in one line (exit status 2), as it does backprop's configuration errors.
Each step then sums the packed, weighted gradient buffer in place on the GPUs,
on the current CUDA stream: no host copy at all (NVLink or PCIe inside a
machine, InfiniBand/RoCE or TCP between machines, as NCCL finds them).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from .errors import BackendSetupError


def _cupy() -> Any:
    """``cupy``, imported on first use (never at import time of this module)."""
    import cupy  # lazy: optional library (this module loads without it)

    return cupy


def _cupy_nccl() -> Any:
    """``cupy.cuda.nccl``, imported on first use; ImportError without CuPy or without the NCCL library."""
    from cupy.cuda import nccl  # lazy: optional library (this module loads without it)

    return nccl


def _nccl() -> Any:
    try:
        nccl = _cupy_nccl()
    except ImportError as exc:
        raise BackendSetupError(f"distributed training with --backend cupy needs NCCL for CuPy "
                                f"({nccl_install_hint()}): {exc}") from None
    if not getattr(nccl, "available", True):
        raise BackendSetupError(f"distributed training with --backend cupy needs NCCL, which this CuPy cannot "
                                f"load ({nccl_install_hint()})")
    return nccl


def nccl_install_hint() -> str:
    """How to install the NCCL library that this CuPy loads: the ``nvidia-nccl-cuNN`` wheel of its CUDA major."""
    major = cupy_cuda_major()
    if major is None:
        return "pip install nvidia-nccl-cu12 for a CuPy on CUDA 12, nvidia-nccl-cu13 for CUDA 13"
    return f"pip install nvidia-nccl-cu{major}"


def cupy_cuda_major() -> int | None:
    """The CUDA major version the installed CuPy was built for (from the CUDA runtime it carries, which needs no
    driver, else from its wheel's name: cupy-cuda12x); None when it cannot be told."""
    try:
        return int(_cupy().cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:
        pass
    for major in (11, 12, 13, 14):
        try:
            metadata.version(f"cupy-cuda{major}x")
            return major
        except metadata.PackageNotFoundError:
            continue
    return None


def visible_gpus() -> int:
    """How many CUDA GPUs this process sees (CUDA_VISIBLE_DEVICES applies)."""
    try:
        cupy = _cupy()
    except ImportError:
        raise BackendSetupError("--backend cupy: CuPy is not installed (pip install 'backprop[cuda12]' or "
                                "'backprop[cuda13]')") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendSetupError(f"--backend cupy: CUDA is not usable ({text})") from None
    if count < 1:
        raise BackendSetupError("--backend cupy: no CUDA GPU is visible")
    return count


class NcclReducer:
    """Sums a flat device buffer over all ranks with ``ncclAllReduce``, in place, on this rank's GPU.

    The Ctrl-C flag does not ride in the device buffer (reading it back would wait for the GPU every step);
    a one-number MPI all-reduce on the host carries it instead, which does not synchronize the device."""

    carries_flag = False

    def __init__(self, communicator: Any, backend: Any):
        nccl = _nccl()
        self.communicator, self.nccl, self.backend = communicator, nccl, backend
        unique_id = nccl.get_unique_id() if communicator.is_root else None
        unique_id = communicator.broadcast_object(unique_id)
        with backend.device:  # the cupy.cuda.Device of this rank
            self.comm = nccl.NcclCommunicator(communicator.size, unique_id, communicator.rank)
        self._types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64, "float16": nccl.NCCL_FLOAT16}

    def allreduce(self, flat: Any, flag: float) -> tuple[Any, float]:
        """``(flat summed over ranks, in place on the GPU, sum of flag over ranks)``."""
        cupy = _cupy()
        code = self._types.get(str(flat.dtype))
        if code is None:
            raise BackendSetupError(f"NCCL all-reduce: unsupported dtype {flat.dtype}")
        with self.backend.device:
            stream = cupy.cuda.get_current_stream()
            self.comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, code, self.nccl.NCCL_SUM, stream.ptr)
        return flat, self.communicator.comm.allreduce(flag)


__all__ = ["NcclReducer", "cupy_cuda_major", "nccl_install_hint", "visible_gpus"]
