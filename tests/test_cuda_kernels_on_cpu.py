"""The CuPy recurrent cells, run on the CPU: their kernels' code as CuPy generates it, compiled by the host's C++
compiler, behind the backend's own Python (``backends/cupy_cells.py``) with NumPy standing in for CuPy.

NVRTC (tests/test_cuda_kernels.py) proves that the kernels compile; this proves that they compute the right
thing. Each ``ElementwiseKernel`` body is CuPy's generated source (``nvrtc_check.elementwise_code``) compiled
with a small header that gives its CUDA and CuPy names a sequential meaning: one loop iteration per GPU thread
(our kernels write only their own thread's entries, so the order does not matter), ``CArray`` a pointer. The
cells then run through ``cupy_cells`` exactly as on a GPU, argument order and stand-ins for absent arrays
included, and must equal the portable cells of ``backends/base.py``. What this cannot check: the GPU itself
(launch configuration, the device's float rounding and flush-to-zero), which only a GPU run shows.

Needs CuPy (its code generator, the ``gpu-ci`` extra) and a C++ compiler; skipped, saying which is missing,
without them.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import types

import array_api_compat.numpy as host_xp
import numpy as np
import pytest

from backends import base, cuda_kernels, cupy_cells
from backends.cuda_kernels import ElementwiseSource

pytest.importorskip("cupy", reason="the kernels' source is CuPy's generated code (pip install -e '.[gpu-ci]')")
COMPILER = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
if COMPILER is None:
    pytest.skip("no C++ compiler to build the kernels for the CPU", allow_module_level=True)

SHIM = r"""
#include <cmath>
#include <cstddef>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
using std::tanh; using std::exp; using std::log; using std::sqrt; using std::fabs;
template <typename T, int ndim, bool c_contiguous = true, bool use_32bit_indexing = false>
struct CArray {
    T* data_;
    ptrdiff_t size_;
    T& operator[](ptrdiff_t i) const { return data_[i]; }
    ptrdiff_t size() const { return size_; }
};
template <int ndim, bool use_32bit_indexing = false>
struct CIndexer {
    ptrdiff_t size_;
    ptrdiff_t index_;
    ptrdiff_t size() const { return size_; }
    void set(ptrdiff_t i) { index_ = i; }
    ptrdiff_t get() const { return index_; }
};
#define CUPY_FOR(i, n) for (ptrdiff_t i = 0; i < (n); ++i)
"""

CTYPES = {"float64": ctypes.c_double, "float32": ctypes.c_float}
SCALARS = {"int32": (ctypes.c_int, np.int32)}


class _Array(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Indexer(ctypes.Structure):
    _fields_ = [("size", ctypes.c_ssize_t), ("index", ctypes.c_ssize_t)]


def _params(text):
    """``"T x, raw T y, int32 n"`` -> [(raw, type, name)]."""
    out = []
    for part in text.split(","):
        words = part.split()
        raw = words[0] == "raw"
        out.append((raw, words[-2], words[-1]))
    return out


class CpuKernel:
    """A registered ``ElementwiseSource`` compiled for the CPU, called as CuPy calls it: inputs then outputs,
    non-raw arrays broadcast to the outputs' shape (index ``i`` runs over it in C order), raw arrays indexed
    by their flat C-order position."""

    def __init__(self, source: ElementwiseSource, dtype: str, directory):
        from backends import nvrtc_check

        self.source, self.dtype = source, np.dtype(dtype)
        code = "\n".join(line for line in nvrtc_check.elementwise_code(source, dtype).splitlines()
                         if not line.startswith("#include"))
        path = directory / f"{source.name}_{dtype}"
        path.with_suffix(".cpp").write_text(SHIM + code)
        subprocess.run([COMPILER, "-std=c++17", "-O1", "-shared", "-fPIC", "-Wno-unknown-pragmas", "-o",
                        str(path.with_suffix(".so")), str(path.with_suffix(".cpp"))], check=True, capture_output=True)
        self.function = getattr(ctypes.CDLL(str(path.with_suffix(".so"))), source.name)
        self.inputs, self.outputs = _params(source.in_params), _params(source.out_params)

    def __call__(self, *args):
        assert len(args) == len(self.inputs) + len(self.outputs), "CuPy takes every input and every output"
        params = self.inputs + self.outputs
        shape = np.broadcast_shapes(*(np.shape(a) for (raw, _, _), a in zip(params, args)
                                      if not raw and isinstance(a, np.ndarray) and a.ndim))
        size = int(np.prod(shape))
        call, write_back, keep = [], [], []
        for index, ((raw, kind, name), value) in enumerate(zip(params, args)):
            output = index >= len(self.inputs)
            if kind in SCALARS:
                call.append(SCALARS[kind][0](int(value)))
                continue
            assert isinstance(value, np.ndarray) and value.dtype == self.dtype, (name, value)
            if raw:
                buffer = np.ascontiguousarray(value)
            else:
                if output:
                    assert value.shape == shape, f"{name}: an output of shape {value.shape}, loop shape {shape}"
                buffer = np.ascontiguousarray(np.broadcast_to(value, shape))
            if output and buffer is not value:
                write_back.append((value, buffer))
            call.append(_Array(buffer.ctypes.data, buffer.size))
            keep.append(buffer)  # alive until the call returns
        self.function(*call, _Indexer(size, 0))
        for value, buffer in write_back:
            value[...] = buffer.reshape(value.shape)


@pytest.fixture(scope="module")
def cpu_cupy(tmp_path_factory):
    """``cupy_cells`` as it runs on a GPU, with NumPy for CuPy and the kernels compiled for the CPU (float64)."""
    directory = tmp_path_factory.mktemp("kernels")
    sources = [cuda_kernels.LSTM_FORWARD, cuda_kernels.LSTM_BACKWARD, cuda_kernels.GRU_FORWARD,
               cuda_kernels.GRU_BACKWARD]
    try:
        compiled = {source.name: CpuKernel(source, "float64", directory) for source in sources}
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"a kernel does not compile for the CPU:\n{exc.stderr.decode()[-3000:]}")
    return types.SimpleNamespace(cupy=np, kernels=compiled)


@pytest.fixture
def on_cpu(cpu_cupy, monkeypatch):
    monkeypatch.setattr(cupy_cells, "_kernel", lambda source: cpu_cupy.kernels[source.name])
    return cpu_cupy.cupy


B, H = 3, 4


def _arrays(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for shape in shapes]


@pytest.mark.parametrize(("first", "pass_back", "with_dc"), [(True, False, False), (False, True, True),
                                                             (False, True, False)],
                         ids=["first-step", "later-step", "no-cell-gradient"])
def test_cupy_lstm_cell_equals_the_portable_cell(on_cpu, first, pass_back, with_dc):
    a, h_prev, c_prev, weight_hh, dh, dc = _arrays(1, (B, 4 * H), (B, H), (B, H), (H, 4 * H), (B, H), (B, H))
    state = (None, None) if first else (h_prev, c_prev)
    dc = dc if with_dc else None
    h, c, cache = base.lstm_cell_forward(host_xp, a.copy(), *state, weight_hh)
    expected = base.lstm_cell_backward(host_xp, dh, dc, cache, weight_hh.T, pass_back)

    block = np.zeros((2, B, 4 * H))[1]  # one step's block of a (time, batch, gates) array
    got_h, got_c, got_cache = cupy_cells.lstm_cell_forward(on_cpu, a.copy(), *state, weight_hh)
    got = cupy_cells.lstm_cell_backward(on_cpu, dh, dc, got_cache, weight_hh, pass_back, out=block)
    np.testing.assert_allclose(got_h, h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_c, c, rtol=1e-12, atol=1e-12)
    assert got[0] is block  # written into the caller's block
    for value, want in zip(got, expected):
        if want is None:
            assert value is None
        else:
            np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("first", "pass_back"), [(True, False), (False, True)], ids=["first-step", "later-step"])
def test_cupy_gru_cell_equals_the_portable_cell(on_cpu, first, pass_back):
    a, h_prev, weight_hh, bias_hn, dh = _arrays(2, (B, 3 * H), (B, H), (H, 3 * H), (H,), (B, H))
    h_prev = None if first else h_prev
    h, cache = base.gru_cell_forward(host_xp, a.copy(), h_prev, weight_hh, bias_hn)
    expected = base.gru_cell_backward(host_xp, dh, cache, weight_hh.T, pass_back)

    blocks = (np.zeros((2, B, 3 * H)), np.zeros((2, B, 3 * H)))
    got_h, got_cache = cupy_cells.gru_cell_forward(on_cpu, a.copy(), h_prev, weight_hh, bias_hn)
    got = cupy_cells.gru_cell_backward(on_cpu, dh, got_cache, weight_hh, pass_back, out=(blocks[0][1], blocks[1][1]))
    np.testing.assert_allclose(got_h, h, rtol=1e-12, atol=1e-12)
    for value, want in zip(got, expected):
        if want is None:
            assert value is None
        else:
            np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(blocks[0][1], expected[0], rtol=1e-12, atol=1e-12)  # into the caller's blocks
    np.testing.assert_allclose(blocks[1][1], expected[1], rtol=1e-12, atol=1e-12)


def test_the_cpu_build_of_a_kernel_is_not_vacuous(cpu_cupy, tmp_path):
    """A kernel with a wrong index (the f gate read from the i gate's block) gives a different result."""
    source = cuda_kernels.LSTM_FORWARD
    broken = ElementwiseSource(source.name, source.in_params, source.out_params,
                               source.operation.replace("gates[k + hidden] + hh[k + hidden]", "gates[k] + hh[k]"),
                               preamble=source.preamble, dtypes=source.dtypes, scalars=source.scalars)
    kernel = CpuKernel(broken, "float64", tmp_path)
    a, h_prev, c_prev, weight_hh = _arrays(3, (B, 4 * H), (B, H), (B, H), (H, 4 * H))
    gates = a.copy()
    c, tanh_c, h = np.empty((B, H)), np.empty((B, H)), np.empty((B, H))
    kernel(c_prev, h_prev @ weight_hh, H, 1, gates, c, tanh_c, h)
    expected_h, _, _ = base.lstm_cell_forward(host_xp, a.copy(), h_prev, c_prev, weight_hh)
    assert not np.allclose(h, expected_h)
    cpu_cupy.kernels[source.name](c_prev, h_prev @ weight_hh, H, 1, a.copy(), c, tanh_c, h)  # the real one: equal
    np.testing.assert_allclose(h, expected_h, rtol=1e-12)
