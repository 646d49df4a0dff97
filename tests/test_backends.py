"""The registry: selection, availability reasons, and what each backend adds to the standard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import array_api_compat
import numpy as np
import pytest

import backends
from backends import registry

from conftest import THREAD_VARIABLES, UPDATES_IN_PLACE, assert_on_backend, weights

# The backend contract: every device of every backend keeps it, array_api_strict's default device included.
pytestmark = pytest.mark.every_device


@pytest.fixture
def fresh_registry(monkeypatch):
    """Let a test change the registry without leaking into other tests."""
    monkeypatch.setattr(registry, "_families", dict(registry._families))
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.setattr(registry, "_instances", {})
    monkeypatch.setattr(registry, "_auto_choice", None)
    return registry


def test_every_builtin_family_is_listed_with_a_reason_when_unavailable():
    rows = backends.backend_statuses()
    names = {row.name.split(":")[0] for row in rows}
    assert {"numpy", "cupy", "torch", "jax", "array_api_strict"} <= names
    for row in rows:
        if row.available:
            assert row.device_name and row.version
        else:
            assert row.reason, f"{row.name} is unavailable without a reason"


def test_numpy_is_always_available():
    backend = backends.get_backend("numpy")
    assert backend.name == "numpy" and backend.device_name == "CPU"


def test_spellings_of_one_backend_give_one_object():
    assert backends.get_backend("numpy") is backends.get_backend(" NumPy ")
    assert backends.get_backend("numpy") is backends.get_backend("numpy:cpu")


def test_cuda_is_an_alias_of_cupy():
    family, device = registry._split("cuda:1")
    assert family.name == "cupy" and device == "1"


def test_unknown_backend_names_the_choices():
    with pytest.raises(backends.UnknownBackend, match="unknown backend 'tensorflow'.*numpy"):
        backends.get_backend("tensorflow")


def test_unavailable_backend_gives_reason_and_alternatives(fresh_registry):
    def broken(device):
        raise backends.BackendUnavailable("fake", "the fake GPU is unplugged")

    backends.register_backend(backends.BackendFamily("fake", broken))
    with pytest.raises(backends.BackendUnavailable) as info:
        backends.get_backend("fake")
    message = str(info.value)
    assert "the fake GPU is unplugged" in message and "Available backends: numpy" in message


def test_cupy_without_gpu_is_unavailable_with_reason():
    try:
        import cupy  # noqa: F401
        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        has_gpu = False
    if has_gpu:
        pytest.skip("this machine has a working CuPy GPU")
    with pytest.raises(backends.BackendUnavailable, match="CuPy|CUDA|GPU"):
        backends.get_backend("cupy")


def test_auto_falls_back_to_numpy_with_one_warning(fresh_registry):
    def no_gpu(device):
        raise backends.BackendUnavailable("cupy", "no CUDA GPU is visible")

    backends.register_backend(backends.BackendFamily("cupy", no_gpu, aliases=("cuda",)), replace=True)
    backends.register_backend(backends.BackendFamily("torch", no_gpu), replace=True)  # auto tries it next
    with pytest.warns(RuntimeWarning, match="no CUDA GPU is visible; using numpy") as record:
        assert backends.get_backend("auto").name == "numpy"
        assert backends.get_backend("auto").name == "numpy"
    assert len([w for w in record if "using numpy" in str(w.message)]) == 1


def test_auto_prefers_a_working_gpu(fresh_registry):
    numpy_backend = backends.get_backend("numpy")

    class PretendGpu(type(numpy_backend)):
        def __init__(self):
            super().__init__()
            self.name = "cupy:0"

    backends.register_backend(backends.BackendFamily("cupy", lambda device: PretendGpu()), replace=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.get_backend("auto").name == "cupy:0"


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("BACKPROP_BACKEND", "array_api_strict:device1")
    assert backends.current_backend().name == "array_api_strict:device1"
    monkeypatch.setenv("BACKPROP_BACKEND", "nonsense")
    with pytest.raises(backends.UnknownBackend, match="BACKPROP_BACKEND='nonsense'"):
        backends.current_backend()


def test_use_backend_is_scoped(monkeypatch):
    monkeypatch.setenv("BACKPROP_BACKEND", "numpy")
    with backends.use_backend("array_api_strict") as inner:
        assert backends.current_backend() is inner
    assert backends.current_backend().name == "numpy"


def test_entry_point_plugins_register(tmp_path, monkeypatch, fresh_registry):
    package = tmp_path / "myplugin.py"
    package.write_text(textwrap.dedent("""
        from backends import BackendFamily, get_backend

        def family():
            return BackendFamily("mylib", lambda device: get_backend("numpy"))
    """))
    dist = tmp_path / "myplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[backprop.backends]\nmylib = myplugin:family\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "mylib" in [family.name for family in backends.families()]
    assert backends.get_backend("mylib").name == "numpy"


def test_importing_backprop_does_not_import_gpu_libraries():
    code = ("import sys, backprop; backprop.get_backend('numpy'); backprop.mlp([2, 3, 1], backend='numpy');"
            "print(sorted(m for m in ('torch', 'cupy', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- what each backend adds to the standard -------------------------------------------------

def test_random_is_seeded_and_on_device(backend):
    a = backend.random(7).normal((3, 4))
    b = backend.random(7).normal((3, 4))
    c = backend.random(8).normal((3, 4))
    assert_on_backend(a, backend, shape=(3, 4))
    np.testing.assert_array_equal(backend.to_host(a), backend.to_host(b))
    assert not np.array_equal(backend.to_host(a), backend.to_host(c))
    assert backend.to_host(backend.random((7, 1)).normal((3, 4))).tolist() != backend.to_host(a).tolist()


def test_random_distributions(backend):
    gen = backend.random(0)
    u = backend.to_host(gen.uniform((20000,), -2.0, 3.0))
    assert u.min() >= -2.0 and u.max() < 3.0 and abs(u.mean() - 0.5) < 0.05
    z = backend.to_host(gen.normal((20000,), 1.0, 2.0))
    assert abs(z.mean() - 1.0) < 0.05 and abs(z.std() - 2.0) < 0.05
    mask = gen.bernoulli((20000,), 0.3)
    assert_on_backend(mask, backend)
    m = backend.to_host(mask)
    assert set(np.unique(m)) <= {0.0, 1.0} and abs(m.mean() - 0.3) < 0.02
    perm = gen.permutation(50)
    assert sorted(backend.to_host(perm).tolist()) == list(range(50))
    with pytest.raises(ValueError, match="probability"):
        gen.bernoulli((2,), 1.5)


def test_activate_makes_the_device_current_and_nests(backend):
    """Inside ``activate()``, entered again or not, the standard's creation functions make this backend's
    arrays, ``*_like`` included (on CuPy they follow the current device, not ``device=``); afterwards the
    device that was current before is current again."""
    xp = backend.xp
    with backend.activate():
        with backend.activate():
            inner = xp.zeros((2,), dtype=xp.float32, device=backend.device)
        made = [inner, xp.arange(3, device=backend.device), xp.zeros_like(inner),
                xp.full((1,), 2.0, dtype=xp.float32, device=backend.device)]
    for array in made:
        assert backend.owns(array) and array_api_compat.device(array) == backend.device
    assert backend.owns(backend.asarray([1.0, 2.0]))  # backend methods enter the device themselves


def test_scatter_add_accumulates_duplicates(backend):
    xp = backend.xp
    with backend.activate():  # array code of our own runs on the backend's device
        target = xp.zeros((4, 2), dtype=xp.float32, device=backend.device)
    indices = backend.asarray([0, 2, 0, 0, 3], dtype=xp.int64)
    values = backend.from_host(np.arange(10, dtype=np.float32).reshape(5, 2))
    result = backend.scatter_add(target, indices, values)
    expected = np.zeros((4, 2), np.float32)
    np.add.at(expected, [0, 2, 0, 0, 3], np.arange(10, dtype=np.float32).reshape(5, 2))
    np.testing.assert_array_equal(backend.to_host(result), expected)
    if backend.library in UPDATES_IN_PLACE:
        assert result is target  # the fast path: no new array
    assert_on_backend(result, backend)


# Above and below the size where the NumPy backend switches to SciPy's BLAS.
FAST_PATH_SHAPES = [(300, 200), (7, 5)]


def _float_dtypes(backend):
    return ["float32", "float64"] if backend.supports_float64 else ["float32"]


@pytest.mark.parametrize("shape", FAST_PATH_SHAPES)
def test_outer_equals_the_portable_outer_product(backend, shape):
    host = np.random.default_rng(0)
    for dtype_name in _float_dtypes(backend):
        a_host = host.standard_normal(shape[0]).astype(dtype_name)
        b_host = host.standard_normal(shape[1]).astype(dtype_name)
        dtype = getattr(backend.xp, dtype_name)
        result = backend.outer(backend.from_host(a_host, dtype), backend.from_host(b_host, dtype))
        assert_on_backend(result, backend, dtype_name, shape)
        portable = backends.Backend.outer(backend, backend.from_host(a_host, dtype), backend.from_host(b_host, dtype))
        np.testing.assert_array_equal(backend.to_host(result), backend.to_host(portable))
        np.testing.assert_allclose(backend.to_host(result), np.multiply.outer(a_host, b_host), rtol=1e-6)


@pytest.mark.parametrize("shape", FAST_PATH_SHAPES)
@pytest.mark.parametrize("beta", [1.0, 0.75])
def test_add_scaled_equals_the_portable_update(backend, shape, beta):
    """beta·target + alpha·source, as the portable default computes it; the libraries that can write into the
    target (the fast path) return the target itself, and the source is left alone everywhere."""
    rng = np.random.default_rng(1)
    for dtype_name in _float_dtypes(backend):
        dtype = getattr(backend.xp, dtype_name)
        target_host = rng.standard_normal(shape).astype(dtype_name)
        source_host = rng.standard_normal(shape).astype(dtype_name)
        target, source = backend.from_host(target_host, dtype), backend.from_host(source_host, dtype)
        portable = backends.Backend.add_scaled(backend, backend.from_host(target_host, dtype), source, -0.25,
                                               beta=beta)
        result = backend.add_scaled(target, source, -0.25, beta=beta)
        if backend.library in UPDATES_IN_PLACE:
            assert result is target
        assert_on_backend(result, backend, dtype_name, shape)
        np.testing.assert_allclose(backend.to_host(result), backend.to_host(portable), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(backend.to_host(result), beta * target_host - 0.25 * source_host, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_array_equal(backend.to_host(source), source_host)  # the source is left alone


def test_scale_and_indexed_updates_return_the_updated_array(backend):
    xp = backend.xp
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    factor = xp.asarray(0.5, dtype=xp.float32, device=backend.device)
    cases = [  # (update, expected result)
        (lambda x: backend.scale(x, 3.0), host * 3.0),
        (lambda x: backend.scale(x, factor), host * 0.5),
        (lambda x: backend.at_set(x, (slice(0, 2), slice(1, 4, 2)), backend.from_host(np.full((2, 2), -1.0))),
         np.where((np.arange(3)[:, None] < 2) & (np.arange(4) % 2 == 1), -1.0, host)),
        (lambda x: backend.at_set(x, (2, 3), 7.0), np.where(np.arange(12).reshape(3, 4) == 11, 7.0, host)),
        (lambda x: backend.at_add(x, (slice(None), slice(1, 3)), backend.from_host(np.ones((3, 2)))),
         host + np.array([0, 1, 1, 0], np.float32)),
    ]
    for number, (update, expected) in enumerate(cases):
        x = backend.from_host(host)
        result = update(x)
        assert_on_backend(result, backend, shape=(3, 4))
        np.testing.assert_array_equal(backend.to_host(result), expected.astype(np.float32), err_msg=f"case {number}")
        if backend.library in UPDATES_IN_PLACE:
            assert result is x, f"case {number}: the fast path writes into its target"


def test_numpy_updates_of_a_read_only_array_return_a_new_one():
    """An array NumPy may not write into (one made from a read-only buffer) gets the portable new array."""
    backend = backends.get_backend("numpy")
    read_only = np.arange(6, dtype=np.float32)
    read_only.flags.writeable = False
    cases = [(backend.add_scaled(read_only, np.ones(6, np.float32), 2.0, beta=0.5), read_only * 0.5 + 2.0),
             (backend.scale(read_only, 2.0), read_only * 2.0),
             (backend.at_set(read_only, slice(0, 2), 9.0), [9, 9, 2, 3, 4, 5]),
             (backend.at_add(read_only, slice(4, 6), 1.0), [0, 1, 2, 3, 5, 6]),
             (backend.scatter_add(read_only, np.array([1, 1]), np.ones(2, np.float32)), [0, 3, 2, 3, 4, 5])]
    for result, expected in cases:
        assert result is not read_only and result.flags.writeable
        np.testing.assert_array_equal(result, np.asarray(expected, np.float32))
    np.testing.assert_array_equal(read_only, np.arange(6))


def test_numpy_training_with_and_without_the_blas_fast_paths_gives_the_same_losses(monkeypatch):
    """One-example steps of a network whose first weight (200 x 180) takes the BLAS outer product and update."""
    import backprop as bp
    from backends import numpy_backend
    from backprop.optim import SGD

    backend = backends.get_backend("numpy")
    rng = np.random.default_rng(4)
    x = backend.from_host(rng.standard_normal((40, 200)).astype(np.float32))
    y = backend.from_host(rng.integers(0, 3, 40))

    def losses():
        model = bp.mlp([200, 180, 3], seed=0, backend=backend)
        trainer = bp.Trainer(model, optimizer=SGD(model, lr=0.002, momentum=0.5), epochs=3, batch_size=1,
                             progress=False, log=None)
        return [trainer.train_epoch(x, y)["train_loss"] for _ in range(3)], model

    fast, fast_model = losses()
    monkeypatch.setattr(numpy_backend, "_scipy_blas", lambda: None)
    portable, portable_model = losses()
    np.testing.assert_allclose(fast, portable, rtol=1e-5)
    assert fast[-1] < fast[0]
    for name, weight in weights(fast_model).items():
        np.testing.assert_allclose(weight, portable_model.named_parameters()[name].value, rtol=1e-4, atol=1e-5)


def test_numpy_fast_paths_without_scipy_or_on_strided_arrays(monkeypatch):
    from backends import numpy_backend

    backend = backends.get_backend("numpy")
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(300, dtype=np.float32), rng.standard_normal(200, dtype=np.float32)
    target = rng.standard_normal((200, 300), dtype=np.float32)
    source = rng.standard_normal((200, 300), dtype=np.float32)
    expected_update = target - 0.5 * source
    with_blas = backend.outer(a, b)
    # A transposed (strided) target cannot go to axpy: it is still updated in place, by NumPy.
    strided = np.ascontiguousarray(target.T).T
    assert backend.add_scaled(strided, source, -0.5) is strided
    np.testing.assert_allclose(strided, expected_update, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(numpy_backend, "_scipy_blas", lambda: None)
    np.testing.assert_allclose(backend.outer(a, b), with_blas, rtol=1e-6)
    assert backend.add_scaled(target, source, -0.5) is target
    np.testing.assert_allclose(target, expected_update, rtol=1e-6, atol=1e-7)


def test_scipy_blas_runs_on_one_thread_and_thread_limits_reach_it():
    """SciPy's bundled OpenBLAS would fight NumPy's for the cores: it runs on one thread, NumPy's keeps its
    own; MPI ranks' limits reach both, even when SciPy loads after the limit was set."""
    script = textwrap.dedent("""
        import json, threadpoolctl
        from backends import get_backend
        from backends.numpy_backend import _scipy_blas

        def pools():
            return {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}

        before = pools()
        assert _scipy_blas() is not None
        loaded = pools()
        assert get_backend("numpy").limit_threads(1)
        print(json.dumps([before, loaded, pools()]))
    """)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}  # the libraries' own thread counts
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    before, loaded, limited = json.loads(done.stdout)
    scipy_own = set(loaded) - set(before)
    if not scipy_own:
        pytest.skip("NumPy and SciPy share one BLAS library here: nothing to keep apart")
    assert all(loaded[path] == 1 for path in scipy_own)
    assert all(loaded[path] == threads for path, threads in before.items())  # NumPy's pool is untouched
    assert set(limited.values()) == {1}


def test_host_round_trip_keeps_values_and_dtype(backend):
    host = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    on_device = backend.from_host(host)
    assert_on_backend(on_device, backend, shape=(3, 4))
    back = backend.to_host(on_device)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, host)
    # float64 host data becomes the default float32 unless asked otherwise
    assert_on_backend(backend.from_host(host.astype(np.float64)), backend)


@pytest.mark.parametrize("kind", ["float32", "float64", "int64", "strided-view"])
def test_host_transfers_are_copies_both_ways(backend, kind):
    """``from_host`` and ``to_host`` copy: a later change on either side never shows on the other."""
    if kind == "float64" and not backend.supports_float64:
        pytest.skip(f"{backend.name} has no float64")
    base = np.arange(12).reshape(3, 4).astype("float32" if kind == "strided-view" else kind)
    host = base[:, ::2] if kind == "strided-view" else base
    original = host.copy()
    dtype = getattr(backend.xp, original.dtype.name)

    on_device = backend.from_host(host, dtype=dtype)
    assert_on_backend(on_device, backend, original.dtype.name, original.shape)
    base += 100  # the host source changes: the device array does not
    np.testing.assert_array_equal(backend.to_host(on_device), original)
    on_device = backend.at_set(on_device, (0, 0), 50)  # the device array changes: the host source does not
    np.testing.assert_array_equal(host, original + 100)

    back = backend.to_host(on_device)
    assert isinstance(back, np.ndarray) and back.dtype == original.dtype
    back += 7  # the host copy changes: the device array does not
    expected = original.copy()
    expected[0, 0] = 50
    np.testing.assert_array_equal(backend.to_host(on_device), expected)
    on_device = backend.at_set(on_device, (1, 1), 60)  # the device array changes: the earlier host copy does not
    np.testing.assert_array_equal(back, expected + 7)


def test_synchronize_and_memory_stats(backend):
    backend.synchronize()
    stats = backend.memory_stats()
    assert isinstance(stats, dict) and all(isinstance(v, int) and v >= 0 for v in stats.values())


def test_cuda_errors_are_explained(monkeypatch):
    from backends import cupy_backend

    error = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime")
    monkeypatch.setattr(cupy_backend, "_driver_library_loads", lambda: False)
    assert cupy_backend._cuda_reason(error).startswith("no NVIDIA driver is visible (libcuda cannot be loaded; "
                                                       "in Docker, run with --gpus all)")
    monkeypatch.setattr(cupy_backend, "_driver_library_loads", lambda: True)
    assert cupy_backend._cuda_reason(error).startswith("the NVIDIA driver is too old")
    assert "--gpus all" in cupy_backend._cuda_reason(RuntimeError("cudaErrorNoDevice: no CUDA-capable device"))


# -- the thread-limit capability (issue 14: one capability instead of three places that set thread limits) ------

def test_a_numpy_thread_limit_holds_in_its_block_and_the_previous_limits_come_back():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    backend = backends.get_backend("numpy")

    def pools():
        return {(p["filepath"], p["user_api"]): p["num_threads"] for p in threadpoolctl.threadpool_info()}

    with threadpoolctl.threadpool_limits(limits=2):  # gives the tests after this one their thread counts back
        before = pools()
        if not any(threads > 1 for threads in before.values()):
            pytest.skip("no thread pool here runs more than one thread: a limit of 1 would change nothing")
        with backend.limit_threads(1) as limit:
            assert isinstance(limit, backends.ThreadLimit) and limit.applied and limit
            assert set(pools().values()) == {1}
        after = pools()
        assert {key: after[key] for key in before} == before
        kept = backend.limit_threads(1)  # not used as a context manager: the limit stays
        assert kept and set(pools().values()) == {1}
        kept.restore()
        assert {key: pools()[key] for key in before} == before


def test_a_torch_thread_limit_holds_in_its_block_and_the_previous_count_comes_back():
    torch = pytest.importorskip("torch")
    backend = backends.get_backend("torch:cpu")
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with backend.limit_threads(1) as limit:
            assert limit.applied and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


def test_the_default_thread_limit_does_nothing_and_says_so(backend):
    """A backend without a thread pool of its own to limit (the base class's default) reports a limit that
    was not applied; ``None`` sets nothing on any backend."""
    limit = backends.Backend.limit_threads(backend, 1)
    assert not limit and not limit.applied
    with limit:  # usable as a context manager all the same, with nothing to give back
        pass
    assert not backend.limit_threads(None)
