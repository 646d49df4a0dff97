"""Test fixtures: every registered backend, narrowed by ``--backend`` or ``$BACKPROP_TEST_BACKENDS``.

Backends that cannot run here are reported as skipped with their reason, never dropped (``-rs`` shows one line
per absent backend, not one per test). ``array_api_strict`` runs on both its devices: on ``device1`` any
array created without ``device=`` fails the tests; tests marked ``every_device`` (the backend contract) run on
every device of every backend, its default device too. The test-only backend ``immutable``
(``backends/immutable_backend.py``) refuses every in-place operation, as JAX's arrays cannot be changed.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

import backends
from backends import counting_backend, immutable_backend

# The benchmarks live beside the package, not in it: make them importable for their smoke tests. Appended, so
# the installed backprop (not the source tree) is what the tests import.
sys.path.append(str(Path(__file__).resolve().parents[1]))

pytest_plugins = ["pytester"]  # tests of these fixtures and hooks run pytest on small test files

# Layers built without backend= use the current backend; keep that quiet and predictable in tests.
os.environ.setdefault("BACKPROP_BACKEND", "numpy")


def configure_jax_for_tests(environ=os.environ) -> None:
    """JAX compiles each operation anew for every shape and dtype it meets (XLA, 20-50 ms of CPU each), and
    that is nearly all of jax:cpu's test time: about 2,900 programs, where NumPy runs the same tests in 6 s.
    Two settings make it cheaper for this process and the ones it starts, unless the environment sets them:

    * XLA's CPU compiler without its fusion emitters and LLVM optimization: -45% CPU per compile; jax:cpu's
      tests 142 s -> 90 s beside other work on 2 cores. Only for jaxlib 0.8-0.10, which have both flags (an
      unknown flag aborts XLA); the kernels are slower, which these small arrays do not notice;
    * JAX's persistent compilation cache, one per checkout in the temp directory: a later run loads the
      programs instead of compiling them (90 s -> 60 s).

    Set before JAX is imported (it reads these when it starts)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        jaxlib = tuple(int(part) for part in version("jaxlib").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return
    if "XLA_FLAGS" not in environ and (0, 8) <= jaxlib < (0, 11):
        environ["XLA_FLAGS"] = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"
    if "JAX_COMPILATION_CACHE_DIR" not in environ:
        import hashlib
        import tempfile

        checkout = hashlib.sha256(str(Path(__file__).resolve().parents[1]).encode()).hexdigest()[:12]
        environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"backprop-tests-jax-{checkout}")
        environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # by default only programs > 1 s


configure_jax_for_tests()


@functools.cache
def share_one_mlir_context() -> bool:
    """Lower every JAX program of this test process in one MLIR context.

    JAX builds a new MLIR context for each program it lowers (loading its dialects: ~4 ms, a quarter of the
    cost of one of the ~2,900 small programs the suite compiles), only so that a long-lived process does not
    keep the types and attributes of every program it ever lowered. A test run is short: one context,
    reused, lowers the same programs (MLIR's own developers measure ~3.7 ms per context and suggest reuse
    where the bloat is acceptable, llvm/llvm-project#217320). A private function of JAX, replaced for the
    tests only, and only for the versions this was measured on (0.8-0.10); an other version keeps its own.
    Returns whether it is in place."""
    from importlib.metadata import version

    try:
        release = tuple(int(part) for part in version("jax").split(".")[:2])
        if not (0, 8) <= release < (0, 11):
            return False
        from jax._src.interpreters import mlir
    except Exception:
        return False
    make_context = getattr(mlir, "make_ir_context", None)
    if make_context is None:
        return False
    mlir.make_ir_context = functools.cache(make_context)
    return True

# The specs every test runs over, in the order they are shown. array_api_strict runs on both its devices: on
# device1 an array made without device= fails; its default device checks what a CPU-device library without
# NumPy's extras gives (host copies that must not be views, say). ``immutable`` (registered here, for the
# tests only) is array_api_strict with arrays that refuse every in-place operation and item assignment: code
# that writes into an array, which JAX would silently ignore or refuse, fails there. simulated_cupy:1 plays
# CuPy on a GPU that is not the current one (backends/simulated_cupy.py): an array made or used outside the
# backend's activate() fails, as it would on cupy:1. Tests marked ``every_device`` (the backend contract) also
# run on every other device that ``backprop backends`` lists.
immutable_backend.register()
counting_backend.register()
#: Test backends that only the tests written for them use (by name), not the suite at large.
ASKED_BY_NAME = {"counting"}
ALL_BACKENDS = ["numpy", "array_api_strict", "array_api_strict:device1", "immutable", "simulated_cupy:1",
                "torch:cpu", "torch:cuda:0", "torch:mps", "jax:cpu", "jax:cuda:0", "cupy:0"]

# The libraries whose backends update arrays in place (Backend.add_scaled, scale, at_set, at_add, scatter_add
# write into their target and return it): the speed path. Every other backend returns new arrays.
UPDATES_IN_PLACE = {"numpy", "torch", "cupy"}


# Tests check results, not speed, and must pass on a shared 2-core machine beside other busy processes. There,
# BLAS and OpenMP pools of 2 threads wait on each other and on those processes (measured: a 0.2 s full-batch
# test took 7 s under two busy loops). So this process and every process it starts use one thread per
# library, unless the environment already says how many. Tests of thread settings set their own.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pytest_configure(config):
    # The Ctrl-C tests need Ctrl-C to arrive as in a terminal. A shell script that starts pytest in the
    # background (`pytest &` without job control) makes it ignore SIGINT, and every process it starts would
    # inherit that; Python's own handler here gives them the default (Python's KeyboardInterrupt) back.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not any(os.environ.get(name) for name in THREAD_VARIABLES):
        os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))  # for the processes the tests start, and torch
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(1)  # NumPy's BLAS is loaded already


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=[], metavar="SPEC",
                     help="run only on this backend (repeatable), e.g. --backend numpy --backend torch:cpu")


def selected_backends(config, every_device: bool = False) -> list[str]:
    chosen = list(config.getoption("--backend"))
    env = os.environ.get("BACKPROP_TEST_BACKENDS", "").strip()
    if not chosen and env:
        chosen = [s.strip() for s in env.split(",") if s.strip()]
    if chosen:
        return chosen
    if every_device:
        return every_listed_device()
    specs = list(ALL_BACKENDS)
    for family in backends.families():  # backends registered by plugins are tested too
        if not any(spec.split(":")[0] == family.name for spec in specs) and family.name not in ASKED_BY_NAME:
            specs.append(family.name)
    return specs


@functools.cache
def every_listed_device() -> list[str]:
    """Every device of every registered backend, as ``backprop backends`` lists them (families in the order
    of the default suite)."""
    specs = []
    for family in backends.families():
        try:
            devices = family.listed_devices()
        except Exception:  # a broken plugin still gets its tests, which then say why it is unavailable
            devices = [None]
        specs += [family.name if device is None else f"{family.name}:{device}" for device in devices]
    order = list(dict.fromkeys(spec.split(":")[0] for spec in ALL_BACKENDS))
    return sorted(specs, key=lambda spec: order.index(spec.split(":")[0]) if spec.split(":")[0] in order
                  else len(order))


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        specs = selected_backends(metafunc.config, every_device=metafunc.definition.get_closest_marker(
            "every_device") is not None)
        metafunc.parametrize("backend", specs, ids=specs, indirect=True)


# The start of the skip message of a test whose backend cannot run here (the summary below folds them).
ABSENT = "absent backend "


@pytest.fixture
def backend(request):
    try:
        backend = backends.get_backend(request.param)
    except backends.BackendUnavailable as exc:
        pytest.skip(f"{ABSENT}{request.param}: {exc.reason.split('. Available backends')[0]}")
    if backend.library == "jax":
        share_one_mlir_context()
    return backend


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """In ``-rs``'s short summary, one line per absent backend with its reason and the number of tests it
    skipped, instead of a line per test. The tests still count as skipped; other skips show as usual.

    Around pytest's own summary (this wrapper runs outside it), the skips for an absent backend are given one
    location, this file, which pytest's folding of equal skips then counts as one line. The skips are told by
    their message alone, so this works on reports that pytest-xdist's workers send back too."""
    moved = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        if isinstance(longrepr, tuple) and len(longrepr) == 3 and str(longrepr[2]).startswith(f"Skipped: {ABSENT}"):
            moved.append((report, longrepr))
            report.longrepr = (__file__, None, longrepr[2].removeprefix("Skipped: "))
    try:
        return (yield)
    finally:
        for report, longrepr in moved:
            report.longrepr = longrepr


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def ones_like(backend, array):
    """Ones of ``array``'s shape and dtype on the backend's device (the output gradient tests feed a backward
    pass). Made inside ``backend.activate()``, as array code of one's own must be on a library with a current
    device: on ``cupy:1`` (and ``simulated_cupy:1``) an array made outside lands on GPU 0."""
    with backend.activate():
        return backend.xp.ones_like(array)


def weights(model) -> dict:
    """Every parameter's array by name (``named_parameters`` gives the ``Parameter`` boxes that hold them)."""
    return {name: param.value for name, param in model.named_parameters().items()}


def assert_on_backend(array, backend, dtype_name="float32", shape=None):
    """The array belongs to the backend's namespace and device and has the expected dtype and shape."""
    import array_api_compat

    assert backend.owns(array), f"expected an array of {backend.name}, got {type(array).__name__}"
    assert array_api_compat.array_namespace(array) is backend.xp
    assert array_api_compat.device(array) == backend.device
    assert array.dtype == getattr(backend.xp, dtype_name), f"expected {dtype_name}, got {array.dtype}"
    if shape is not None:
        assert tuple(array.shape) == tuple(shape)
