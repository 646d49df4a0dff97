"""What the JAX backend adds to the backend contract: x64 mode scoped to ``activate()`` (never the user's JAX
code), its random streams, copies despite JAX's zero-copy CPU transfers, and the reasons it gives when it
cannot run. (The contract every backend keeps is in test_backends.py; the suite runs on jax:cpu.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import backends
from backends import jax_backend
from backends.errors import BackendUnavailable

jax = pytest.importorskip("jax", reason="JAX is not installed (pip install 'backprop[jax]')")
jnp = jax.numpy


@pytest.fixture
def jax_cpu():
    return backends.get_backend("jax:cpu")


def test_activate_turns_x64_on_only_inside_the_block_and_restores_the_users_setting(jax_cpu):
    for users_setting in (False, True):
        with jax.enable_x64(users_setting):
            with jax_cpu.activate():
                assert jnp.zeros(3).dtype == jnp.float64
                with jax_cpu.activate():  # re-entrant
                    assert jax.config.jax_enable_x64
                assert jax.config.jax_enable_x64 and jax.config.jax_default_matmul_precision == "highest"
            assert jax.config.jax_enable_x64 is users_setting
            assert jax.config.jax_default_matmul_precision is None
            with pytest.raises(RuntimeError), jax_cpu.activate():
                raise RuntimeError("a failure inside the block")
            assert jax.config.jax_enable_x64 is users_setting
            assert jnp.zeros(3).dtype == (jnp.float64 if users_setting else jnp.float32)


def test_a_float64_model_computes_in_float64_and_the_users_jax_code_stays_float32(jax_cpu):
    import backprop as bp

    host = np.random.default_rng(0)
    x_host, g_host = host.standard_normal((4, 3)), host.standard_normal((4, 2))

    def forward_and_backward(backend):
        model = bp.mlp([3, 5, 2], activation_name="tanh", seed=0, backend=backend, dtype="float64")
        y, backprop = model.begin_update(backend.from_host(x_host, dtype=backend.xp.float64))
        grad_x = backprop(backend.from_host(g_host, dtype=backend.xp.float64))
        assert y.dtype == backend.xp.float64 and grad_x.dtype == backend.xp.float64
        return [backend.to_host(a) for a in (y, grad_x, *model.named_gradients().values())]

    with jax_cpu.activate():  # what backprop's public calls do
        results = forward_and_backward(jax_cpu)
    for ours, numpys in zip(results, forward_and_backward(backends.get_backend("numpy")), strict=True):
        assert ours.dtype == np.float64
        np.testing.assert_allclose(ours, numpys, rtol=1e-12, atol=1e-14)  # float32 would be ~1e-7 off
    with jax.enable_x64(False):  # the user's own JAX code, with JAX's default setting
        assert jnp.zeros(3).dtype == jnp.float32
        assert (jnp.ones(2) * 2.0).dtype == jnp.float32


def test_x64_mode_is_per_thread(jax_cpu):
    """Another thread's JAX code keeps its own setting while backprop works in float64 in this one."""
    inside, done = threading.Event(), threading.Event()
    seen = {}

    def other_thread():
        inside.wait(timeout=30)
        with jax.enable_x64(False):  # the other thread's own setting
            seen["dtype"] = jnp.zeros(3).dtype
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with jax_cpu.activate():
        inside.set()
        assert done.wait(timeout=30)
        assert jnp.zeros(3).dtype == jnp.float64
    thread.join()
    assert seen["dtype"] == jnp.float32


def test_float64_work_outside_activate_fails_the_suite_instead_of_passing_in_float32():
    """Outside x64 mode JAX computes float64 as float32 with a warning; pyproject.toml makes the suite treat
    that warning as an error, so backprop code that escaped ``activate()`` cannot pass unnoticed."""
    with jax.enable_x64(False), pytest.raises(UserWarning, match="float64"):
        jnp.zeros(2, dtype=jnp.float64)


def test_float64_host_data_and_results_keep_their_dtype_in_and_out_of_x64_mode(jax_cpu):
    host = np.linspace(0, 1, 7)  # float64, not representable in float32
    with jax.enable_x64(False):
        on_device = jax_cpu.from_host(host, dtype=jax_cpu.xp.float64)
        assert on_device.dtype == jnp.float64
        back = jax_cpu.to_host(on_device)
    assert back.dtype == np.float64 and back.flags.writeable
    np.testing.assert_array_equal(back, host)
    assert jax_cpu.from_host(host).dtype == jnp.float32  # float64 host data: float32 unless asked
    assert jax_cpu.from_host(np.arange(3)).dtype == jnp.int64


def test_host_changes_never_reach_a_device_array(jax_cpu):
    """JAX's CPU transfer can wrap a NumPy buffer without copying; from_host hands it a private copy."""
    for host in (np.arange(6, dtype=np.float32), np.arange(6), np.arange(12, dtype=np.float32)[::2]):
        original = host.copy()
        on_device = jax_cpu.from_host(host, dtype=jax_cpu.xp.asarray(host).dtype)
        host += 100
        np.testing.assert_array_equal(jax_cpu.to_host(on_device), original)
        back = jax_cpu.to_host(on_device)
        back += 1  # a writable copy of our own
        np.testing.assert_array_equal(jax_cpu.to_host(on_device), original)


def test_scatter_add_returns_a_new_array_and_leaves_the_target(jax_cpu):
    with jax_cpu.activate():
        target = jax_cpu.from_host(np.zeros((3, 2)), dtype=jnp.float64)
        result = jax_cpu.scatter_add(target, jax_cpu.asarray([2, 0, 2]), jax_cpu.from_host(np.ones((3, 2)) / 3,
                                                                                             dtype=jnp.float64))
    assert result.dtype == jnp.float64
    np.testing.assert_array_equal(jax_cpu.to_host(result), [[1 / 3] * 2, [0, 0], [2 / 3] * 2])
    np.testing.assert_array_equal(jax_cpu.to_host(target), np.zeros((3, 2)))


def test_random_streams_follow_the_seed_whatever_the_users_x64_setting(jax_cpu):
    def draws(seed):
        gen = jax_cpu.random(seed)
        return [jax_cpu.to_host(a) for a in (gen.normal((3, 4)), gen.uniform((5,)), gen.permutation(9),
                                              gen.normal((2,), dtype=jnp.float64))]

    with jax.enable_x64(False):
        first = draws((7, 1))
    with jax.enable_x64(True):
        again = draws((7, 1))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [a.dtype for a in first] == [np.float32, np.float32, np.int64, np.float64]
    assert first[3].astype(np.float32).astype(np.float64).tolist() != first[3].tolist()  # real float64 draws
    assert not np.array_equal(first[0], draws((7, 2))[0]) and not np.array_equal(first[0], draws(7)[0])


@pytest.mark.parametrize("n", [0, 1, 1023, 1024, 1025, 3000])
def test_permutations_of_every_size(jax_cpu, n):
    """Draws are made in power-of-two sizes and cut: sizes at and around the boundaries."""
    perm = jax_cpu.random(n).permutation(n)
    assert jax_cpu.owns(perm) and perm.dtype == jnp.int64
    assert sorted(jax_cpu.to_host(perm).tolist()) == list(range(n))
    if n > 3:
        assert jax_cpu.to_host(perm).tolist() != list(range(n))


def test_draw_sizes_cover_every_request_with_few_distinct_sizes():
    sizes = {n: jax_backend._draw_size(n) for n in (0, 1, 1024, 1025, 2**20, 2**20 + 1, 3 * 2**20 - 5)}
    assert sizes == {0: 1024, 1: 1024, 1024: 1024, 1025: 2048, 2**20: 2**20, 2**20 + 1: 2 * 2**20,
                     3 * 2**20 - 5: 3 * 2**20}


def test_memory_figures(jax_cpu):
    assert jax_cpu.memory_stats() == {}  # JAX reports none for the CPU
    available = jax_cpu.available_memory()
    assert available is None or (isinstance(available, int) and available > 0)


# -- availability and its reasons ------------------------------------------------------------------------------

def test_without_jax_the_reason_names_the_install_command(monkeypatch):
    real = jax_backend.importlib.util.find_spec
    monkeypatch.setattr(jax_backend.importlib.util, "find_spec",
                        lambda name, *args: None if name == "jax" else real(name, *args))
    with pytest.raises(BackendUnavailable, match=r"JAX is not installed \(pip install 'backprop\[jax\]'\)"):
        jax_backend.load("cpu")
    assert jax_backend.listed_devices() == ["cpu", "cuda:0"]


def test_a_cuda_device_without_jaxs_cuda_support_is_unavailable_with_the_install_command(monkeypatch):
    monkeypatch.setattr(jax_backend, "_cuda_plugin_installed", lambda: False)
    monkeypatch.setattr(jax, "devices", _no_cuda(jax.devices))
    with pytest.raises(BackendUnavailable, match=r"no CUDA support \(pip install 'backprop\[jax-cuda12\]'"):
        jax_backend.load("cuda:0")
    assert jax_backend.load(None).name == "jax:cpu"  # ``jax`` alone: the CPU when no GPU works


def test_cuda_support_without_a_working_gpu_says_why(monkeypatch):
    monkeypatch.setattr(jax_backend, "_cuda_plugin_installed", lambda: True)
    monkeypatch.setattr(jax, "devices", _no_cuda(jax.devices))
    monkeypatch.setattr(jax_backend, "_cuda_init_error", lambda jax: "no CUDA-capable device is detected")
    with pytest.raises(BackendUnavailable, match="plugin is installed but no CUDA GPU works: no CUDA-capable device"):
        jax_backend.load("cuda:0")


def test_a_gpu_number_that_does_not_exist(monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda kind=None: ["gpu0", "gpu1"] if kind == "cuda" else [])
    with pytest.raises(BackendUnavailable, match=r"CUDA device 2 does not exist \(2 visible\)"):
        jax_backend.load("cuda:2")


@pytest.mark.parametrize("spec, reason", [("jax:tpu", "'tpu' is not a JAX device; expected cpu or cuda:N"),
                                          ("jax:cpu:1", "'cpu:1' is not a JAX device"),
                                          ("jax:cuda:one", "expected a GPU number such as jax:cuda:0")])
def test_bad_device_names(spec, reason):
    with pytest.raises(BackendUnavailable, match=reason.replace("(", r"\(")):
        jax_backend.load(spec.partition(":")[2])


def test_a_failing_test_computation_makes_the_backend_unavailable(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("XLA could not allocate\nmore detail")

    monkeypatch.setattr(jax, "device_put", broken)
    with pytest.raises(BackendUnavailable, match="a test computation failed: XLA could not allocate$"):
        jax_backend.load("cpu")


def _no_cuda(real_devices):
    def devices(kind=None):
        if kind == "cuda":
            raise RuntimeError("Unknown backend cuda. Available backends are ['cpu']")
        return real_devices(kind)

    return devices


def test_the_suites_jax_settings_leave_the_environments_own_alone(monkeypatch):
    import importlib.metadata

    import conftest

    for jaxlib, flagged in (("0.10.2", True), ("0.8.0", True), ("0.7.2", False), ("0.11.0", False)):
        monkeypatch.setattr(importlib.metadata, "version", lambda name, jaxlib=jaxlib: jaxlib)
        environ = {}
        conftest.configure_jax_for_tests(environ)
        assert ("XLA_FLAGS" in environ) is flagged, jaxlib
        assert environ["JAX_COMPILATION_CACHE_DIR"] and environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    own = {"XLA_FLAGS": "--xla_dump_to=/tmp/x", "JAX_COMPILATION_CACHE_DIR": "/somewhere"}
    environ = dict(own)
    conftest.configure_jax_for_tests(environ)
    assert environ == own


def test_the_suite_lowers_its_programs_in_one_mlir_context(jax_cpu):
    """conftest.share_one_mlir_context, a test-speed setting: in place for the JAX versions it was measured on,
    and programs lowered after it (new shapes, so new programs) still compute the right numbers."""
    import importlib.metadata

    from jax._src.interpreters import mlir

    import conftest

    release = tuple(int(part) for part in importlib.metadata.version("jax").split(".")[:2])
    assert conftest.share_one_mlir_context() is ((0, 8) <= release < (0, 11))
    if not conftest.share_one_mlir_context():
        return
    assert mlir.make_ir_context() is mlir.make_ir_context()
    x = np.arange(39, dtype=np.float32).reshape(3, 13) / 40
    with jax_cpu.activate():
        first = jnp.tanh(jnp.asarray(x) @ jnp.asarray(x.T)).sum(axis=0)
        second = jax.jit(lambda a: jnp.exp(-a).max(axis=1))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(first), np.tanh(x @ x.T).sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(second), np.exp(-x).max(axis=1), rtol=1e-6)
