"""GPU code paths, checked without a GPU: what reading the code found wrong (issue 13, section 6), each with a
test that failed before its fix.

No GPU is available here, so the GPU libraries are replaced where a GPU would answer: a CuPy made of NumPy
(``fake_cupy``) whose cuBLAS or cuRAND can be broken on purpose, PyTorch's CUDA device switch, the GPU
counts. The code under test (the probes, ``auto``, the rank's device, the all-reduce) is the real one.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
import warnings

import array_api_compat.numpy
import numpy as np
import pytest

import backends
import backprop as bp
from backends import cupy_backend, registry, simulated_cupy
from backprop.errors import ConfigError

from conftest import assert_on_backend


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_families", dict(registry._families))
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.setattr(registry, "_instances", {})
    monkeypatch.setattr(registry, "_auto_choice", None)
    return registry


# -- the CuPy probe: one matrix product (cuBLAS) and one random draw (cuRAND) -------------------------------------

def _numpy_cupy(broken: str | None = None) -> types.ModuleType:
    """A CuPy made of NumPy, on one pretend GPU; ``broken`` ("cublas" or "curand") fails as that library does
    when it cannot load or initialise."""
    cupy = types.ModuleType("cupy")
    cupy.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cupy.__version__ = "14.2.0"
    cupy.float32, cupy.arange, cupy.ones = np.float32, np.arange, np.ones

    def matmul(a, b):
        if broken == "cublas":
            raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED")
        return np.matmul(a, b)

    class RandomState:
        def __init__(self, seed):
            if broken == "curand":
                raise RuntimeError("CURAND_STATUS_INITIALIZATION_FAILED")
            self._rng = np.random.default_rng(seed)

        def random_sample(self, shape, dtype):
            return self._rng.random(shape, dtype=dtype)

    cupy.matmul = matmul
    cupy.random = types.SimpleNamespace(RandomState=RandomState)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                    getDeviceProperties=lambda index: {"name": b"Pretend GPU"})
    cupy.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda index: contextlib.nullcontext())
    return cupy


@pytest.fixture
def install_cupy(monkeypatch):
    """Put a NumPy-made CuPy (and its array_api_compat namespace) where ``import cupy`` finds it."""
    def install(broken=None):
        monkeypatch.setitem(sys.modules, "cupy", _numpy_cupy(broken))
        monkeypatch.setitem(sys.modules, "array_api_compat.cupy", array_api_compat.numpy)
        monkeypatch.setattr(cupy_backend, "_driver_library_loads", lambda: True)

    return install


@pytest.mark.parametrize("broken, library", [("cublas", "cuBLAS"), ("curand", "cuRAND")])
def test_the_cupy_probe_runs_a_matrix_product_and_a_random_draw(install_cupy, broken, library):
    """Before: the probe ran one elementwise kernel and a sum, so a CuPy whose cuBLAS or cuRAND cannot load
    was listed as available and failed at the first Dense layer or weight initialisation."""
    install_cupy(broken)
    with pytest.raises(backends.BackendUnavailable) as info:
        cupy_backend.load("0")
    reason = info.value.reason
    assert f"a {library} " in reason and ("CUBLAS_STATUS" in reason or "CURAND_STATUS" in reason)
    assert "\n" not in reason


def test_the_cupy_probe_passes_a_working_gpu(install_cupy):
    install_cupy()  # the same pretend CuPy, nothing broken: the probe's checks pass
    backend = cupy_backend.load("0")
    assert backend.name == "cupy:0" and backend.device_name == "Pretend GPU"


# -- the PyTorch probe ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("function, what", [("matmul", "a matrix product"), ("rand", "a random draw")])
def test_the_torch_probe_runs_a_matrix_product_and_a_random_draw(monkeypatch, function, what):
    torch = pytest.importorskip("torch")
    from backends import torch_backend

    def broken(*args, **kwargs):
        raise RuntimeError(f"CUDA error: {function} is broken here\nsecond line")

    monkeypatch.setattr(torch, function, broken)
    with pytest.raises(backends.BackendUnavailable) as info:
        torch_backend.load("cpu")
    assert info.value.reason == f"{what} failed: CUDA error: {function} is broken here"


# -- TF32 off inside backprop's calls on torch CUDA --------------------------------------------------------------

@pytest.fixture
def torch_on_pretend_cuda(monkeypatch):
    """A ``torch:cuda:0`` backend without a GPU: PyTorch's device switch and device name are all that touches
    CUDA when the backend is made and activated."""
    torch = pytest.importorskip("torch")
    from backends import torch_backend

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Pretend GPU")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    switches = torch_backend.tf32_switches(torch)
    tf32 = "tf32" if switches[0][1] == "fp32_precision" else True
    saved = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, _ in switches:  # as PyTorch has it for convolutions by default, and a user may for matmuls
        setattr(owner, name, tf32)
    yield torch_backend.TorchBackend(torch.device("cuda", 0)), switches, tf32
    for (owner, name, _), value in zip(switches, saved):  # (monkeypatch cannot restore PyTorch's switches)
        setattr(owner, name, value)


def test_torch_cuda_computes_float32_without_tf32_inside_its_calls(torch_on_pretend_cuda):
    """Before: cuDNN convolutions ran in TF32 on Ampere and newer (PyTorch's default), 10 bits of mantissa,
    which the 1e-5 parity tests cannot pass."""
    backend, switches, tf32 = torch_on_pretend_cuda
    with backend.activate():
        assert [getattr(owner, name) for owner, name, _ in switches] == [exact for _, _, exact in switches]
        with backend.activate():  # nested public calls
            pass
        assert [getattr(owner, name) for owner, name, _ in switches] == [exact for _, _, exact in switches]
    assert [getattr(owner, name) for owner, name, _ in switches] == [tf32] * len(switches)  # the user's again


def test_torch_cuda_tf32_is_an_explicit_option(torch_on_pretend_cuda):
    backend, switches, tf32 = torch_on_pretend_cuda
    backend.allow_tf32 = True
    with backend.activate():
        assert [getattr(owner, name) for owner, name, _ in switches] == [tf32] * len(switches)


# -- auto: CuPy, else PyTorch CUDA, else NumPy --------------------------------------------------------------------

def _unavailable(reason):
    def load(device):
        raise backends.BackendUnavailable(f"x:{device}", reason)

    return load


def test_auto_picks_torch_cuda_when_cupy_is_missing(fresh_registry, monkeypatch):
    """Before: ``auto`` fell back from CuPy straight to NumPy, on a machine with a GPU and PyTorch CUDA."""
    numpy_backend = backends.get_backend("numpy")
    tried = []

    class PretendTorchGpu(type(numpy_backend)):
        def __init__(self, device):
            super().__init__()
            self.name = f"torch:{device}"

    def torch_load(device):
        tried.append(device)
        return PretendTorchGpu(device)

    backends.register_backend(backends.BackendFamily("cupy", _unavailable("CuPy is not installed"),
                                                     aliases=("cuda",)), replace=True)
    backends.register_backend(backends.BackendFamily("torch", torch_load), replace=True)
    monkeypatch.setattr(registry, "_nvidia_driver_present", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.get_backend("auto").name == "torch:cuda:0"
        assert backends.auto_backend(1).name == "torch:cuda:1"
    assert tried == ["cuda:0", "cuda:1"]


def test_auto_without_a_driver_does_not_import_torch(fresh_registry, monkeypatch):
    tried = []
    backends.register_backend(backends.BackendFamily("cupy", _unavailable("no CUDA GPU is visible"),
                                                     aliases=("cuda",)), replace=True)
    backends.register_backend(backends.BackendFamily("torch", lambda device: tried.append(device)), replace=True)
    monkeypatch.setattr(registry, "_nvidia_driver_present", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"no GPU backend: cupy:0: no CUDA GPU is visible; using numpy"):
        assert backends.get_backend("auto").name == "numpy"
    assert tried == []


def test_auto_gives_both_reasons_when_no_gpu_library_works(fresh_registry, monkeypatch):
    backends.register_backend(backends.BackendFamily("cupy", _unavailable("CuPy is not installed"),
                                                     aliases=("cuda",)), replace=True)
    backends.register_backend(backends.BackendFamily("torch", _unavailable("this PyTorch was built without CUDA")),
                              replace=True)
    monkeypatch.setattr(registry, "_nvidia_driver_present", lambda: True)
    with pytest.warns(RuntimeWarning) as record:
        assert backends.get_backend("auto").name == "numpy"
    assert [str(w.message) for w in record] == [
        "no GPU backend: cupy:0: CuPy is not installed; torch:cuda:0: this PyTorch was built without CUDA; "
        "using numpy on the CPU"]


# -- a distributed job: one rank per GPU -----------------------------------------------------------------------

@pytest.fixture
def gpus(monkeypatch, fresh_registry):
    """A machine with ``set_count(n)`` GPUs through a CuPy family that records the GPUs it loads."""
    import backends.nccl as nccl
    import backends.torch_backend as torch_backend

    count = {"n": 2}
    loaded = []

    def load(device):
        if int(device or 0) >= count["n"]:
            raise backends.BackendUnavailable(f"cupy:{device}", "no such GPU")
        loaded.append(device)
        return simulated_cupy.SimulatedCupyBackend(1)

    backends.register_backend(backends.BackendFamily("cupy", load, aliases=("cuda",),
                                                     rank_devices=lambda device: nccl.visible_gpus()), replace=True)
    monkeypatch.setattr(cupy_backend, "cuda_gpu_count", lambda: count["n"])
    monkeypatch.setattr(torch_backend, "cuda_gpu_count", lambda: 0, raising=False)
    monkeypatch.setattr(nccl, "visible_gpus", lambda: count["n"])

    def set_count(n):
        count["n"] = n
        return loaded

    return set_count


@pytest.mark.parametrize("spec", ["cupy", "auto"])
def test_more_ranks_than_gpus_is_a_clear_error(gpus, spec):
    """Before: rank r took GPU r mod (GPUs), so two ranks shared a GPU, which NCCL refuses mid-run."""
    from backprop.distributed import device_backend

    loaded = gpus(2)
    rank = types.SimpleNamespace(size=3, local_rank=2, local_size=3)
    with pytest.raises(ConfigError) as info:
        device_backend(spec, rank)
    assert str(info.value) == "3 ranks on this machine but 2 GPUs visible: start at most one rank per GPU " \
                              "(mpirun -n 2 per machine)"
    assert loaded == []  # no GPU touched


def test_as_many_ranks_as_gpus_take_one_each(gpus):
    from backprop.distributed import device_backend

    loaded = gpus(3)
    for local_rank in range(3):
        device_backend("cupy", types.SimpleNamespace(size=6, local_rank=local_rank, local_size=3))
    assert loaded == ["0", "1", "2"]


def test_auto_spreads_ranks_over_the_gpus_pytorch_sees(gpus, monkeypatch, fresh_registry):
    """No CuPy, PyTorch CUDA on 2 GPUs: each rank gets its own GPU through ``auto``, not GPU 0 for all."""
    import backends.torch_backend as torch_backend
    from backprop.distributed import device_backend

    gpus(0)
    monkeypatch.setattr(torch_backend, "cuda_gpu_count", lambda: 2)
    monkeypatch.setattr(registry, "_nvidia_driver_present", lambda: True)
    numpy_backend = backends.get_backend("numpy")

    class PretendTorchGpu(type(numpy_backend)):
        def __init__(self, device):
            super().__init__()
            self.name = f"torch:{device}"

    backends.register_backend(backends.BackendFamily("torch", PretendTorchGpu), replace=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = device_backend("auto", types.SimpleNamespace(size=2, local_rank=1, local_size=2))
    assert backend.name == "torch:cuda:1"
    with pytest.raises(ConfigError, match="3 ranks on this machine but 2 GPUs visible"):
        device_backend("auto", types.SimpleNamespace(size=3, local_rank=0, local_size=3))


@pytest.fixture
def torch_gpus(monkeypatch, fresh_registry):
    """A machine where PyTorch sees ``set_count(n)`` CUDA GPUs: the real torch family's rank hooks, with a
    ``load`` that records the devices it is asked for (where PyTorch would open a CUDA context)."""
    import dataclasses

    import backends.torch_backend as torch_backend

    count = {"n": 2}
    loaded = []
    numpy_backend = backends.get_backend("numpy")

    class PretendTorch(type(numpy_backend)):
        def __init__(self, device):
            super().__init__()
            self.name = f"torch:{device}" if device else "torch"

    def load(device):
        loaded.append(device)
        return PretendTorch(device)

    torch_family = registry._families["torch"]
    backends.register_backend(dataclasses.replace(torch_family, load=load), replace=True)
    monkeypatch.setattr(torch_backend, "cuda_gpu_count", lambda: count["n"])
    monkeypatch.setattr(torch_backend, "nvidia_driver_loads", lambda: True)

    def set_count(n):
        count["n"] = n
        return loaded

    return set_count


@pytest.mark.parametrize("spec", ["torch:cuda", "torch:cuda:0", "torch:cuda:1", "torch"])
def test_torch_cuda_ranks_spread_over_the_gpus(torch_gpus, spec):
    """Before: every rank of ``--backend torch:cuda`` loaded the device the spec names, so two ranks shared GPU 0
    while GPU 1 idled. Rank r on its machine takes ``torch:cuda:r``, whatever index the spec names (as CuPy)."""
    from backprop.distributed import device_backend

    loaded = torch_gpus(2)
    assert backends.devices_for_ranks(spec) == 2
    names = [device_backend(spec, types.SimpleNamespace(size=4, local_rank=r, local_size=2)).name for r in (0, 1)]
    assert names == ["torch:cuda:0", "torch:cuda:1"] and loaded == ["cuda:0", "cuda:1"]


@pytest.mark.parametrize("spec, device", [("torch:cpu", "cpu"), ("torch:mps", "mps")])
def test_torch_cpu_and_mps_ranks_stay_on_the_device_named(torch_gpus, spec, device):
    from backprop.distributed import device_backend

    loaded = torch_gpus(2)  # GPUs there, unused: the spec names another device
    assert backends.devices_for_ranks(spec) is None
    assert device_backend(spec, types.SimpleNamespace(size=2, local_rank=1, local_size=2)).name == spec
    assert loaded == [device]


def test_more_torch_ranks_than_gpus_is_the_same_clear_error(torch_gpus):
    from backprop.distributed import device_backend

    loaded = torch_gpus(2)
    with pytest.raises(ConfigError) as info:
        device_backend("torch:cuda:1", types.SimpleNamespace(size=3, local_rank=2, local_size=3))
    assert str(info.value) == "3 ranks on this machine but 2 GPUs visible: start at most one rank per GPU " \
                              "(mpirun -n 2 per machine)"
    assert loaded == []  # no GPU touched


def test_torch_cuda_ranks_without_a_gpu_are_a_one_line_error(torch_gpus, monkeypatch):
    """``torch:cuda`` with no GPU visible says why in one line (as ``cupy``); ``torch`` alone, which would not
    pick CUDA there, leaves every rank on the device it picks."""
    import backends.torch_backend as torch_backend
    from backprop.distributed import device_backend

    loaded = torch_gpus(0)
    rank = types.SimpleNamespace(size=2, local_rank=1, local_size=2)
    with pytest.raises(backends.BackendError) as info:
        device_backend("torch:cuda", rank)
    assert "\n" not in str(info.value) and str(info.value).startswith("--backend torch:cuda: PyTorch sees no CUDA GPU")
    monkeypatch.setattr(torch_backend, "nvidia_driver_loads", lambda: False)
    with pytest.raises(backends.BackendError, match=r"^--backend torch:cuda:1: no NVIDIA driver is visible"):
        device_backend("torch:cuda:1", rank)
    assert loaded == []
    assert backends.devices_for_ranks("torch") is None
    assert device_backend("torch", rank).name == "torch" and loaded == [None]


# -- one rank: the gradients stay on the device -------------------------------------------------------------------

def test_one_rank_all_reduce_stays_on_the_device(backend, monkeypatch):
    """Before: a 1-rank ``--distributed`` run copied the packed gradient to the host and back every step (on a
    GPU, a wait for the device each step)."""
    pytest.importorskip("mpi4py")
    from backprop.distributed import world

    communicator = world()
    assert communicator.size == 1
    model = bp.mlp([3, 2], seed=0, backend=backend)
    _, backprop = model.begin_update(backend.from_host(np.ones((2, 3), np.float32)))
    backprop(backend.from_host(np.ones((2, 2), np.float32)))
    expected = backend.to_host(model.layers[0].params["weight"].grad) * 0.5
    to_host = backend.to_host

    def no_host_copy(*args, **kwargs):
        raise AssertionError("the all-reduce of one rank copied to the host")

    monkeypatch.setattr(backend, "to_host", no_host_copy)
    monkeypatch.setattr(backend, "from_host", no_host_copy)
    communicator.broadcast_parameters(model)  # once per run: rank 0's weights to every rank
    communicator.allreduce_gradients(model, 0.5)  # every step
    monkeypatch.undo()
    grad = model.layers[0].params["weight"].grad
    assert_on_backend(grad, backend, shape=(3, 2))
    np.testing.assert_allclose(to_host(grad), expected, rtol=1e-6)


# -- NCCL: the install hint names the wheel of this CuPy's CUDA ----------------------------------------------------

@pytest.mark.parametrize("major", [12, 13])
def test_nccl_hint_names_the_wheel_of_the_cuda_major(monkeypatch, major):
    """Before: always ``nvidia-nccl-cu12``, and ``cupy-cudaXXx[all]`` (whose [all] extra has no NCCL)."""
    import backends.nccl as nccl

    def no_nccl():
        raise ImportError("libnccl.so.2: cannot open shared object file")

    monkeypatch.setattr(nccl, "_cupy", lambda: types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(runtimeGetVersion=lambda: major * 1000 + 90))))
    monkeypatch.setattr(nccl, "_cupy_nccl", no_nccl)
    with pytest.raises(backends.BackendSetupError) as info:
        nccl.NcclReducer(None, None)
    message = str(info.value)
    assert f"pip install nvidia-nccl-cu{major}" in message and "[all]" not in message
    assert f"cu{25 - major}" not in message


def test_nccl_hint_without_a_cupy_names_both_wheels(monkeypatch):
    from importlib import metadata

    import backends.nccl as nccl

    def no_cupy():
        raise ImportError("No module named 'cupy'")

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(nccl, "_cupy", no_cupy)
    monkeypatch.setattr(metadata, "version", not_installed)
    assert nccl.nccl_install_hint() == ("pip install nvidia-nccl-cu12 for a CuPy on CUDA 12, nvidia-nccl-cu13 "
                                        "for CUDA 13")


# -- the cuda12 / cuda13 extras bring CUDA's libraries as wheels --------------------------------------------------

def test_cuda_extras_need_no_system_cuda_toolkit():
    """Before: ``backprop[cuda12]`` installed CuPy alone, which then looked for cuBLAS, cuRAND and NVRTC in a
    system CUDA toolkit; CuPy's ``[ctk]`` extra brings them as pip wheels."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    from pathlib import Path

    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for major in (12, 13):
        (requirement,) = [Requirement(r) for r in extras[f"cuda{major}"]]
        assert requirement.name == f"cupy-cuda{major}x" and requirement.extras == {"ctk"}, requirement
