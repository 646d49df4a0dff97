"""JAX arrays on CPU or an NVIDIA GPU (``jax:cpu``, ``jax:cuda:N``; ``jax`` alone: a GPU if one works, else the
CPU).

``jax.numpy`` implements the array API standard itself: ``array_api_compat`` hands it back unwrapped, and it
is this backend's namespace. JAX is imported only when this backend is asked for.

JAX arrays are immutable: the operations here return new arrays (``scatter_add`` included) and never change
their arguments.

64-bit types. JAX has float64 and int64 only in its "x64" mode, a switch (``jax_enable_x64``) that is off by
default and that changes what the user's own JAX code computes (``jnp.zeros(3)`` becomes float64). So this
backend never turns it on globally: ``backend.activate()`` turns it on for the current thread, inside a
``with`` block, together with the backend's device as JAX's default device (and full float32 precision for
matrix products), and puts them back as they were on exit. backprop enters ``activate()`` in every public
call and the backend's methods enter it themselves, so float64 models compute in float64 while the user's
code outside keeps its own setting. A float64 array handed back to the user is float64; computing on it in
one's own code needs x64 mode there too (inside ``backend.activate()``, or with x64 on), else JAX computes
some operations on it in float32.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import base
from .array_types import Array, Device, DType, HostArrayLike
from .base import Backend, ThreadLimit, activation_backward, activation_forward, host_available_memory
from .errors import BackendUnavailable
from .random import DeviceRandom, Seed, _entropy

INSTALL_HINT = "pip install 'backprop[jax]'"
CUDA_INSTALL_HINT = "pip install 'backprop[jax-cuda12]' or 'backprop[jax-cuda13]'"


# Each new shape given to a jax.random function compiles a new program (~0.3 s of CPU each). Draws are made
# in a few sizes instead and cut to the shape asked for, which compiles a small slice (~0.04 s): powers of two
# up to 2^20 numbers, whole multiples of 2^20 above (at most 4 MB of float32 drawn for nothing).
MIN_DRAW_SIZE = 1 << 10
DRAW_SIZE_STEP = 1 << 20


def _draw_size(n: int) -> int:
    if n <= DRAW_SIZE_STEP:
        return max(MIN_DRAW_SIZE, 1 << max(0, n - 1).bit_length())
    return -(-n // DRAW_SIZE_STEP) * DRAW_SIZE_STEP


class JaxRandom(DeviceRandom):
    """Random numbers from ``jax.random``: a threefry key made from the seed, split once per draw.

    The key is built from two 32-bit words that NumPy's ``SeedSequence`` derives from the seed (an int or a
    tuple of ints), so one seed gives the same stream every time, in or out of x64 mode. The numbers are not
    NumPy's (each backend's stream is its own; initial weights come from the host, so they are equal anyway).
    An array of n elements is the first n numbers of a draw of ``_draw_size(n)`` (see above).
    """

    def __init__(self, backend: JaxBackend, seed: Seed):
        super().__init__(backend, seed)
        import jax  # lazy: optional library

        self._jax = jax
        words = np.random.SeedSequence(_entropy(seed)).generate_state(2, dtype=np.uint32)
        with backend.activate():
            self._key = jax.random.wrap_key_data(jax.device_put(words, backend.device), impl="threefry2x32")

    def _next_key(self):
        self._key, key = self._jax.random.split(self._key)
        return key

    def _draw(self, sample, shape, dtype):
        n = math.prod(shape)
        with self.backend.activate():
            flat = sample(self._next_key(), (_draw_size(n),), dtype=dtype)
            return _first_elements(flat, tuple(shape))

    def _uniform01(self, shape, dtype):
        return self._draw(self._jax.random.uniform, shape, dtype)

    def _normal01(self, shape, dtype):
        return self._draw(self._jax.random.normal, shape, dtype)

    def permutation(self, n: int) -> Array:
        """Indices sorted by random 64-bit keys: two keys are equal (which would bias the order a little) with
        probability under n² / 2⁶⁵. (``jax.random.permutation`` compiles anew for every n.)"""
        jax = self._jax
        with self.backend.activate():
            keys = jax.random.bits(self._next_key(), (_draw_size(n),), dtype=self.backend.xp.uint64)
            return self.backend.xp.argsort(_first_elements(keys, (n,)), stable=True)


@functools.cache
def _slicer() -> Callable[..., Array]:
    import jax  # lazy: optional library

    @functools.partial(jax.jit, static_argnums=1)
    def first_elements(flat, shape):
        return flat[:math.prod(shape)].reshape(shape)

    return first_elements


def _first_elements(flat: Array, shape: tuple[int, ...]) -> Array:
    return _slicer()(flat, shape)


def _jitted_method(name: str, static: Sequence[str] = ()) -> Callable[..., Any]:
    """``Backend.<name>`` (the portable capability) as one jitted program per call signature: the backend and
    the keyword arguments named in ``static`` are compile-time constants (they steer Python branches);
    arrays, learning rates and step numbers are inputs, so a new value compiles nothing."""
    compiled: dict[str, Callable[..., Any]] = {}

    def method(self: JaxBackend, *args: Any, **kwargs: Any) -> Any:
        program = compiled.get(name)
        if program is None:
            import jax  # lazy: optional library

            program = compiled[name] = jax.jit(getattr(Backend, name), static_argnums=(0,),
                                               static_argnames=tuple(static))
        with self.activate():
            return program(self, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = getattr(Backend, name).__doc__
    return method


@functools.cache
def _jitted_dense() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The dense layer's forward and backward passes (the portable formulas) as jitted programs."""
    # lazy: optional library
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnums=(3, 4))
    def forward(x, weight, bias, activation, slope):
        z = x @ weight
        if bias is not None:
            z = z + bias
        y = activation_forward(jnp, z, activation, slope)
        return y, (z if activation == "gelu" else y)

    @functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
    def backward(grad_output, x, weight, kept, activation, slope, has_bias, input_grad):
        grad = activation_backward(jnp, grad_output, kept, activation, slope)
        inputs = jnp.reshape(x, (-1, weight.shape[0]))
        flat_grad = jnp.reshape(grad, (-1, weight.shape[1]))
        grad_weight = jnp.matrix_transpose(inputs) @ flat_grad
        grad_bias = jnp.sum(flat_grad, axis=0) if has_bias else None
        grad_input = grad @ jnp.matrix_transpose(weight) if input_grad else None
        return grad_input, grad_weight, grad_bias

    return forward, backward


class JaxBackend(Backend):
    library = "jax"
    step_compiler = ("jit", "pure")

    def __init__(self, device: Device):
        # lazy: optional library
        import jax
        import jax.numpy as xp

        self._jax = jax
        device_name = "CPU" if device.platform == "cpu" else f"{device.device_kind} (CUDA)"
        super().__init__(f"jax:{_spec_device(device)}", xp, device, device_name=device_name,
                         version=jax.__version__)
        self.permutes_epochs = device.platform != "cpu"

    @contextlib.contextmanager
    def activate(self) -> Iterator[JaxBackend]:
        """``with backend.activate():`` for this thread until the block ends, JAX's x64 mode on, this backend's
        device JAX's default, and float32 matrix products in full float32 (NumPy's and PyTorch's precision; a
        GPU would otherwise use TF32, about 3 decimal digits); then all three are as they were (the user's own
        JAX code never sees them change). Re-entrant."""
        jax = self._jax
        with jax.enable_x64(True), jax.default_device(self.device), jax.default_matmul_precision("highest"):
            yield self

    def owns(self, x: object) -> bool:
        if not isinstance(x, self._jax.Array):
            return False
        if isinstance(x, self._jax.core.Tracer):  # a value being traced (a compiled step): it has no device yet
            return True
        try:
            return x.device == self.device
        except Exception:
            return False

    def asarray(self, obj: object, dtype: DType | None = None) -> Array:
        with self.activate():
            return self.xp.asarray(obj, dtype=dtype, device=self.device)

    def from_host(self, host_array: HostArrayLike, dtype: DType | None = None) -> Array:
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        # On the CPU, JAX may wrap a NumPy buffer without copying it: hand it a copy that nobody else holds.
        host_copy = np.array(host_array, dtype=None if dtype is None else np.dtype(dtype), order="C", copy=True)
        with self.activate():
            return self._jax.device_put(host_copy, self.device)

    def to_host(self, x: Array) -> np.ndarray:
        # np.asarray of a CPU array can be a read-only view of JAX's buffer; np.array copies.
        with self.activate():  # a 64-bit array must not pass through 32-bit conversion
            return np.array(x, copy=True)

    def random(self, seed: Seed) -> JaxRandom:
        return JaxRandom(self, seed)

    def scatter_add(self, target: Array, indices: Array, values: Array) -> Array:
        """A new array: ``target`` with ``values[i]`` added at row ``indices[i]``, duplicates accumulating
        (JAX arrays cannot be changed in place; ``target`` is left as it was)."""
        with self.activate():
            return target.at[indices].add(values)

    def conv2d_forward(self, x: Array, weight: Array, bias: Array | None, *, stride: Sequence[int],
                       padding: Sequence[int], dilation: Sequence[int]) -> tuple[Array, tuple[Any, ...]]:
        """XLA's convolution, compiled once per shape and setting (the portable im2col path compiles every slice
        of it separately)."""
        settings = (tuple(stride), tuple(padding), tuple(dilation))
        with self.activate():
            y = _convolution().forward(x, weight, bias, *settings)
        return y, (x, weight, settings)

    def conv2d_backward(self, grad_output: Array, saved: tuple[Any, ...], *, bias: bool, input_grad: bool = True
                        ) -> tuple[Array | None, Array, Array | None]:
        x, weight, settings = saved
        with self.activate():
            return _convolution().backward(grad_output, x, weight, *settings, bool(bias), bool(input_grad))

    # The LSTM and GRU steps: the portable cells, each compiled whole by XLA (one program per step shape
    # instead of one per operation; inside a compiled training step they are traced into it).
    def lstm_cell_forward(self, a: Array, h_prev: Array | None, c_prev: Array | None, weight_hh: Array
                          ) -> tuple[Array, Array, tuple[Any, ...]]:
        with self.activate():
            return _cells().lstm_forward(a, h_prev, c_prev, weight_hh)

    def lstm_cell_backward(self, dh: Array, dc: Array | None, cache: tuple[Any, ...], weight_hh: Array, *,
                           pass_back: bool, out: Array | None = None, weight_hh_t: Array | None = None
                           ) -> tuple[Array, Array | None, Array | None]:
        with self.activate():  # (weight_hh_t: None from this backend; XLA transposes inside the program)
            return _cells().lstm_backward(dh, dc, cache, weight_hh, bool(pass_back))

    def gru_cell_forward(self, a: Array, h_prev: Array | None, weight_hh: Array, bias_hn: Array
                         ) -> tuple[Array, tuple[Any, ...]]:
        with self.activate():
            return _cells().gru_forward(a, h_prev, weight_hh, bias_hn)

    def gru_cell_backward(self, dh: Array, cache: tuple[Any, ...], weight_hh: Array, *, pass_back: bool,
                          out: tuple[Array | None, Array | None] | None = None, weight_hh_t: Array | None = None
                          ) -> tuple[Array, Array, Array | None]:
        with self.activate():
            return _cells().gru_backward(dh, cache, weight_hh, bool(pass_back))

    # -- the capabilities, each one compiled program (an eager step's dispatches: a few, not dozens; inside a
    # compiled step XLA fuses them with the rest). The portable code of backends/base.py, jitted with this
    # backend and the hyperparameters that steer Python branches static.
    def dense_forward(self, x: Array, weight: Array, bias: Array | None = None, activation: str | None = None, *,
                      negative_slope: float = 0.01) -> tuple[Array, tuple[Any, ...]]:
        with self.activate():
            y, kept = _jitted_dense()[0](x, weight, bias, activation, float(negative_slope))
        return y, (x, weight, kept, activation, negative_slope, bias is not None)

    def dense_backward(self, grad_output: Array, saved: tuple[Any, ...], *, input_grad: bool = True,
                       weight_grad_out: Array | None = None, bias_grad_out: Array | None = None
                       ) -> tuple[Array | None, Array, Array | None]:
        x, weight, kept, activation, slope, has_bias = saved
        with self.activate():
            return _jitted_dense()[1](grad_output, x, weight, kept, activation, float(slope), bool(has_bias),
                                      bool(input_grad))

    softmax_cross_entropy = _jitted_method("softmax_cross_entropy", static=("with_grad",))
    add_step_metrics = _jitted_method("add_step_metrics")
    close_step_metrics = _jitted_method("close_step_metrics")
    tensor_norms = _jitted_method("tensor_norms")
    clip_coefficient = _jitted_method("clip_coefficient")
    multi_tensor_scale = _jitted_method("multi_tensor_scale")
    multi_tensor_sgd = _jitted_method("multi_tensor_sgd", static=("momentum", "nesterov", "weight_decay"))
    multi_tensor_adam = _jitted_method("multi_tensor_adam", static=("beta1", "beta2", "weight_decay",
                                                                    "decoupled_weight_decay"))
    multi_tensor_rmsprop = _jitted_method("multi_tensor_rmsprop", static=("momentum", "weight_decay"))
    multi_tensor_adagrad = _jitted_method("multi_tensor_adagrad", static=("weight_decay",))

    def compile_function(self, function: Callable[..., Any], *, static_argnums: Sequence[int] = (),
                         donate_argnums: Sequence[int] = ()) -> Callable[..., Any]:
        return self._jax.jit(function, static_argnums=static_argnums, donate_argnums=donate_argnums)

    def trace_shapes(self, function: Callable[..., Any], *args: Any) -> Any:
        return self._jax.eval_shape(function, *args)

    def limit_threads(self, threads: int | None) -> ThreadLimit:
        """Not applied: XLA sizes its CPU thread pool when JAX starts, from ``XLA_FLAGS`` (for one thread:
        ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``), and it cannot change later."""
        return ThreadLimit(False)

    def synchronize(self) -> None:
        # JAX has no device-wide barrier: a computation queued after all others on the device finishes last.
        with self.activate():
            self.xp.zeros((), device=self.device).block_until_ready()
        self._jax.effects_barrier()

    def memory_stats(self) -> dict[str, int]:
        stats = self.device.memory_stats() or {}  # None on the CPU
        wanted = {"bytes_in_use": "allocated_bytes", "peak_bytes_in_use": "peak_allocated_bytes",
                  "bytes_limit": "limit_bytes", "bytes_reserved": "reserved_bytes"}
        return {ours: int(stats[theirs]) for theirs, ours in wanted.items() if theirs in stats}

    def available_memory(self) -> int | None:
        if self.device.platform == "cpu":
            return host_available_memory()
        # JAX's allocator takes a share of the GPU up front (75% unless XLA_PYTHON_CLIENT_MEM_FRACTION or
        # XLA_PYTHON_CLIENT_PREALLOCATE say otherwise): what our arrays can still get is what is left of it.
        stats = self.device.memory_stats() or {}
        if "bytes_limit" not in stats:
            return None
        return max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))


@functools.cache
def _cells() -> types.SimpleNamespace:
    """The portable recurrent cells of ``backends/base.py`` on ``jax.numpy``, jitted (``pass_back`` static)."""
    # lazy: optional library
    import jax
    import jax.numpy as jnp

    def lstm_backward(dh, dc, cache, weight_hh, pass_back):
        return base.lstm_cell_backward(jnp, dh, dc, cache, weight_hh.T, pass_back)

    def gru_backward(dh, cache, weight_hh, pass_back):
        return base.gru_cell_backward(jnp, dh, cache, weight_hh.T, pass_back)

    return types.SimpleNamespace(
        lstm_forward=jax.jit(functools.partial(base.lstm_cell_forward, jnp)),
        lstm_backward=jax.jit(lstm_backward, static_argnums=4),
        gru_forward=jax.jit(functools.partial(base.gru_cell_forward, jnp)),
        gru_backward=jax.jit(gru_backward, static_argnums=3))


@functools.cache
def _convolution() -> types.SimpleNamespace:
    """The convolution fast path: jitted forward and backward (through ``jax.vjp``) functions, NCHW/OIHW."""
    # lazy: optional library
    import jax
    from jax import lax

    def convolve(x, weight, stride, padding, dilation):
        # Precision.HIGHEST: full float32 products, as NumPy and PyTorch give (a GPU may otherwise use TF32).
        return lax.conv_general_dilated(x, weight, window_strides=stride, padding=[(p, p) for p in padding],
                                        rhs_dilation=dilation, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                        precision=lax.Precision.HIGHEST)

    @functools.partial(jax.jit, static_argnums=(3, 4, 5))
    def forward(x, weight, bias, stride, padding, dilation):
        y = convolve(x, weight, stride, padding, dilation)
        return y if bias is None else y + bias[None, :, None, None]

    @functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
    def backward(grad_output, x, weight, stride, padding, dilation, bias, input_grad):
        if input_grad:
            _, pullback = jax.vjp(lambda x, w: convolve(x, w, stride, padding, dilation), x, weight)
            grad_input, grad_weight = pullback(grad_output)
        else:
            _, pullback = jax.vjp(lambda w: convolve(x, w, stride, padding, dilation), weight)
            (grad_weight,), grad_input = pullback(grad_output), None
        grad_bias = grad_output.sum(axis=(0, 2, 3)) if bias else None
        return grad_input, grad_weight, grad_bias

    return types.SimpleNamespace(forward=forward, backward=backward)


def _spec_device(device: Device) -> str:
    return "cpu" if device.platform == "cpu" else f"cuda:{device.id}"


def _import_jax(name: str) -> types.ModuleType:
    if importlib.util.find_spec("jax") is None:
        raise BackendUnavailable(name, f"JAX is not installed ({INSTALL_HINT})")
    try:
        # lazy: optional library
        import jax
        import jax.numpy  # noqa: F401
    except Exception as exc:  # installed but broken (a jaxlib that does not match jax, say)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(name, f"JAX failed to import: {detail}") from None
    return jax


def _cuda_plugin_installed() -> bool:
    return any(importlib.util.find_spec(plugin) is not None
               for plugin in ("jax_cuda12_plugin", "jax_cuda13_plugin"))


def _cuda_devices(jax: types.ModuleType, name: str) -> list[Device]:
    try:
        return jax.devices("cuda")
    except RuntimeError as exc:
        if not _cuda_plugin_installed():
            raise BackendUnavailable(name, f"this JAX has no CUDA support ({CUDA_INSTALL_HINT})") from None
        detail = _cuda_init_error(jax) or str(exc).splitlines()[0]
        raise BackendUnavailable(name, f"JAX's CUDA plugin is installed but no CUDA GPU works: {detail}") from None


def _cuda_init_error(jax: types.ModuleType) -> str:
    """Why JAX's CUDA backend failed to start, as JAX recorded it (a private table; empty if it moves)."""
    try:
        from jax._src import xla_bridge  # lazy: optional library

        return str(getattr(xla_bridge, "_backend_errors", {}).get("cuda", "")).splitlines()[0]
    except Exception:
        return ""


def load(device: str | None) -> Backend:
    """``jax`` alone picks the best device: the first CUDA GPU, else the CPU."""
    name = f"jax:{device}" if device else "jax"
    jax = _import_jax(name)
    if device is None:
        try:
            return load("cuda:0")
        except BackendUnavailable:
            return load("cpu")
    kind, _, index_text = device.partition(":")
    if kind == "cpu" and not index_text:
        chosen = jax.devices("cpu")[0]
    elif kind in ("cuda", "gpu"):
        try:
            index = int(index_text or 0)
            if index < 0:
                raise ValueError
        except ValueError:
            raise BackendUnavailable(name, f"expected a GPU number such as jax:cuda:0, got {device!r}") from None
        gpus = _cuda_devices(jax, name)
        if index >= len(gpus):
            raise BackendUnavailable(name, f"CUDA device {index} does not exist ({len(gpus)} visible)")
        chosen = gpus[index]
    else:
        raise BackendUnavailable(name, f"{device!r} is not a JAX device; expected cpu or cuda:N")
    try:  # a real allocation and computation, not just an import
        with jax.default_device(chosen):
            probe = jax.device_put(np.arange(4, dtype=np.float32), chosen)
            float((probe * 2).sum())
    except Exception as exc:
        raise BackendUnavailable(name, f"a test computation failed: {exc}".splitlines()[0]) from None
    return _instance(chosen)


_backends: dict[Device, JaxBackend] = {}


def _instance(device: Device) -> JaxBackend:
    if device not in _backends:
        _backends[device] = JaxBackend(device)
    return _backends[device]


def listed_devices() -> list[str]:
    """The devices shown in ``backprop backends`` and tested: the CPU, and each CUDA GPU (``cuda:0`` when none
    is visible, so that it is listed with the reason). Asking JAX how many GPUs it sees starts its CUDA
    backend, so that is done only when JAX's CUDA plugin is installed."""
    devices = ["cpu", "cuda:0"]
    try:
        if importlib.util.find_spec("jax") is None or not _cuda_plugin_installed():
            return devices
        import jax  # lazy: optional library

        count = len(jax.devices("cuda"))
        devices[1:] = [f"cuda:{i}" for i in range(max(count, 1))]
    except Exception:
        pass
    return devices
