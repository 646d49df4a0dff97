"""The ``Backend`` interface: one array library on one device.

``backprop/`` does all array work through ``backend.xp`` (an array API
namespace from ``array_api_compat``) and calls the methods below only for what
the standard lacks: random numbers, scatter-add, host transfer,
synchronization and memory statistics, and for the updates an optimizer or a
layer would otherwise write into an array.

Arrays may be immutable. The standard does not promise that an array can be
changed in place, and some libraries (JAX) do not allow it: there ``x += y`` or
``x[i] = v`` rebinds a name or fails. So every update method here returns its
result, and callers always use the returned array, never the one they passed
in. The defaults are portable (new arrays, or ``array_api_extra.at``); NumPy,
PyTorch and CuPy override them to write in place and return the same array,
which keeps their speed.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .random import DeviceRandom, Seed


class Backend:
    """An array library bound to one device.

    Subclasses set the attributes in ``__init__`` and implement the methods that
    raise ``NotImplementedError`` here.
    """

    #: Registered family name, such as ``"numpy"`` or ``"torch"``.
    library: str = ""

    def __init__(self, name: str, xp, device, *, device_name: str, version: str):
        self.name = name  # full spec, such as "torch:cuda:0"
        self.xp = xp
        self.device = device
        self.device_name = device_name
        self.version = version
        self.float_dtype = xp.float32

    def __repr__(self) -> str:
        return f"<Backend {self.name} ({self.device_name})>"

    # Backends are shared singletons: copying a layer must not copy its backend.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    # -- the device ----------------------------------------------------------
    def activate(self):
        """``with backend.activate(): ...`` makes this backend's device the current one inside the block.

        Libraries with a *current device* need it: CuPy creates every array and runs every kernel there,
        whatever ``device=`` says. backprop enters it once per public call (fit, evaluate, a layer's
        forward, an optimizer's step, saving and loading), and every method of a backend enters it itself,
        so code written against ``xp`` below them runs on the right device. Array code of your own on a
        device other than the library's default belongs inside it. Re-entrant and cheap; the default (a
        library whose arrays carry their device, such as NumPy or PyTorch on the CPU) does nothing."""
        return NOTHING_TO_ACTIVATE

    # -- capabilities -------------------------------------------------------
    @property
    def supports_float64(self) -> bool:
        return True

    def owns(self, x) -> bool:
        """True when ``x`` is an array of this library on this device (a cheap check)."""
        raise NotImplementedError

    # -- creation and transfer ----------------------------------------------
    def dtype(self, name_or_dtype):
        """Resolve ``"float32"`` (or a dtype of this library) to this library's dtype."""
        if isinstance(name_or_dtype, str):
            try:
                return getattr(self.xp, name_or_dtype)
            except AttributeError:
                raise TypeError(f"unknown dtype {name_or_dtype!r}; expected a name such as 'float32'") from None
        return name_or_dtype

    def asarray(self, obj, dtype=None):
        """An array on this backend's device (``obj``: a Python scalar, list or array of this library)."""
        return self.xp.asarray(obj, dtype=dtype, device=self.device)

    def from_host(self, host_array, dtype=None):
        """Copy a NumPy array (or anything ``numpy.asarray`` accepts) onto the device.

        Always a copy, never a view: later changes to either side do not affect the other.
        float64 host data becomes the backend's default float32 unless ``dtype`` says otherwise.
        """
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        return self.xp.asarray(host_array, dtype=dtype, device=self.device, copy=True)

    def to_host(self, x) -> np.ndarray:
        """Copy an array of this backend to a NumPy array on the host (a copy, never a view)."""
        raise NotImplementedError

    # -- what the standard lacks --------------------------------------------
    def random(self, seed: Seed) -> DeviceRandom:
        """A seeded generator that draws on the device."""
        raise NotImplementedError

    def scatter_add(self, target, indices, values):
        """``target`` with ``values[i]`` added to row ``indices[i]`` (axis 0), duplicates accumulating.

        Returns the result: ``target`` itself where the library updates in place, a new array where it cannot
        (use the returned array either way). (Plain ``target[indices] += values`` keeps only one of several
        duplicate indices.)
        """
        raise NotImplementedError

    # -- updates: portable defaults, in place where the library allows -----------
    def add_scaled(self, target, source, alpha: float = 1.0, *, beta: float = 1.0):
        """``beta * target + alpha * source`` (BLAS ``axpby``): every optimizer update, and the layers' additions
        to arrays of their own. ``source``: an array of ``target``'s shape, one that broadcasts to it, or a number.

        Returns the result; use it, not ``target``, afterwards. This default returns a new array, which is right
        for every library, immutable ones included. NumPy, PyTorch and CuPy write into ``target`` and return it
        (NumPy: one fused BLAS ``axpy`` pass for large arrays; PyTorch: ``mul_``/``add_``), with no temporary
        for ``alpha * source`` and no new array, which halves the memory traffic of a large update.
        """
        with self.activate():
            return add_scaled(target, source, alpha, beta=beta)

    def scale(self, target, factor):
        """``target * factor`` (``factor``: a number or a 0-d array of this backend): gradient clipping,
        decoupled weight decay. Returns the result; NumPy, PyTorch and CuPy scale ``target`` in place."""
        with self.activate():
            return scale(target, factor)

    def at_set(self, x, index, values):
        """``x`` with ``x[index] = values``: ``array_api_extra.at(x, index).set(values)``, which writes into ``x``
        where the library allows it (and returns ``x``) and otherwise returns an updated copy (JAX: ``.at[]``).
        Use the returned array either way."""
        import array_api_extra as xpx

        with self.activate():
            return xpx.at(x, index).set(values, xp=self.xp)

    def at_add(self, x, index, values):
        """``x`` with ``x[index] += values`` (``index``: integers and slices; within one call no element is
        named twice): ``array_api_extra.at(x, index).add(values)``, in place where the library allows it.
        Use the returned array either way."""
        import array_api_extra as xpx

        with self.activate():
            return xpx.at(x, index).add(values, xp=self.xp)

    # -- optional fast paths -------------------------------------------------
    def outer(self, a, b):
        """The outer product of two vectors, a new ``(len(a), len(b))`` array with ``[i, j] = a[i] * b[j]``:
        the weight gradient of a one-example batch. Backends override it with BLAS where that is faster."""
        xp = self.xp
        with self.activate():
            return xp.reshape(a, (-1, 1)) * xp.reshape(b, (1, -1))

    def conv2d_forward(self, x, weight, bias, *, stride, padding, dilation):
        """A faster 2-D convolution (NCHW), or None when this backend has none.

        ``x``: (N, C, H, W); ``weight``: (O, C, kh, kw); ``bias``: (O,) or None; ``stride``, ``padding``
        (zeros) and ``dilation``: (h, w) pairs. Returns ``(y, saved)``: y (N, O, OH, OW) as PyTorch's
        ``conv2d``, and whatever ``conv2d_backward`` needs. The default returns None and ``Conv2D`` then runs
        its portable im2col path (standard array operations only, in ``backprop/layers/im2col.py``), which is
        what every backend without an override uses.
        """
        return None

    def conv2d_backward(self, grad_output, saved, *, bias: bool, input_grad: bool = True):
        """``(grad_input, grad_weight, grad_bias)`` for a convolution done by ``conv2d_forward``
        (``grad_bias`` is None when ``bias`` is False, ``grad_input`` None when ``input_grad`` is False)."""
        raise NotImplementedError(f"{self.name} has no conv2d fast path")

    # -- fused recurrent cells ----------------------------------------------------------------------------
    #: True when ``lstm_cell_backward`` and ``gru_cell_backward`` write their gate gradients into the ``out``
    #: arrays they are given (and return them): a recurrent layer then lets every step write into one
    #: (time, batch, gates) array instead of stacking the steps afterwards. The portable defaults ignore
    #: ``out``.
    cells_write_out: bool = False

    def lstm_cell_forward(self, a, h_prev, c_prev, weight_hh):
        """One LSTM step, PyTorch's formulation and gate order (i, f, g, o): the recurrent product, the four
        gates and the new state.

        ``a``: ``(batch, 4·hidden)``, the input's share of the pre-activations (x_t W_ih + b); the caller hands
        over an array of its own, which the backend may overwrite (NumPy, PyTorch and CuPy write the gates
        into it). ``h_prev``, ``c_prev``: the previous state ``(batch, hidden)``, or both None for the zero
        state (then the recurrent product is skipped). ``weight_hh``: ``(hidden, 4·hidden)``.

        Returns ``(h, c, cache)``: the new state and what ``lstm_cell_backward`` needs (opaque to the caller;
        never changed afterwards by either side)."""
        with self.activate():
            return lstm_cell_forward(self.xp, a, h_prev, c_prev, weight_hh)

    def lstm_cell_backward(self, dh, dc, cache, weight_hh, *, pass_back: bool, out=None, weight_hh_t=None):
        """The chain rule through one LSTM step.

        ``dh``: dL/dh_t ``(batch, hidden)`` (read only); ``dc``: dL/dc_t from the step after (None: none);
        ``cache``: what ``lstm_cell_forward`` returned for this step. Returns ``(da, dh_prev, dc_prev)``:
        dL/d(pre-activations) ``(batch, 4·hidden)``, and, only when ``pass_back``, the gradients for the
        previous state (else None, None). ``out``: an array of ``da``'s shape that a backend with
        ``cells_write_out`` writes ``da`` into (and returns); the default returns a new array.
        ``weight_hh_t``: ``transposed_for_products(weight_hh)``, made once for all the steps of a pass (None:
        the cell transposes ``weight_hh`` itself)."""
        with self.activate():
            return lstm_cell_backward(self.xp, dh, dc, cache, _transposed(self.xp, weight_hh, weight_hh_t),
                                      pass_back)

    def gru_cell_forward(self, a, h_prev, weight_hh, bias_hn):
        """One GRU step, PyTorch's formulation and gate order (r, z, n).

        ``a``: ``(batch, 3·hidden)``, x_t W_ih + b (the caller's own: the backend may overwrite it);
        ``h_prev``: ``(batch, hidden)`` or None (the zero state); ``weight_hh``: ``(hidden, 3·hidden)``;
        ``bias_hn``: ``(hidden,)``, the bias inside the reset gate's product. Returns ``(h, cache)``."""
        with self.activate():
            return gru_cell_forward(self.xp, a, h_prev, weight_hh, bias_hn)

    def gru_cell_backward(self, dh, cache, weight_hh, *, pass_back: bool, out=None, weight_hh_t=None):
        """The chain rule through one GRU step, given dL/dh_t ``dh`` (read only).

        Returns ``(d_in, d_hh, dh_prev)``: dL/d(pre-activations) as ``weight_ih`` and the bias see them, as
        ``weight_hh`` sees them (they differ in the n block: r ⊙ da_n), both ``(batch, 3·hidden)``, and dL/dh_{t−1}
        (None unless ``pass_back``). ``out``: None or a pair of arrays for ``d_in`` and ``d_hh``;
        ``weight_hh_t``: as for ``lstm_cell_backward``."""
        with self.activate():
            return gru_cell_backward(self.xp, dh, cache, _transposed(self.xp, weight_hh, weight_hh_t), pass_back)

    def transposed_for_products(self, weight):
        """``weight``ᵀ laid out for the matrix products of many steps in a row (a recurrent layer's backward
        pass asks once and hands the result to every step's cell as ``weight_hh_t``), or None (the default)
        when using the transposed view at each step is as fast. NumPy makes a C-contiguous copy: OpenBLAS
        multiplies by a transposed view 20-25% slower (one thread, 64x512 by 512x128)."""
        return None

    def limit_threads(self, threads: int) -> bool:
        """Use at most ``threads`` CPU threads for this library's kernels (BLAS, OpenMP); False when the
        limit could not be applied. Several processes sharing a machine (MPI ranks) need this: oversubscribed
        BLAS threads can make each step tens of times slower."""
        return False

    def synchronize(self) -> None:
        """Wait for all queued work on the device (needed before timing GPU work)."""

    def memory_stats(self) -> dict[str, int]:
        """Memory figures the library reports, in bytes; empty when it reports none."""
        return {}

    def available_memory(self) -> int | None:
        """Bytes free for new arrays where this backend keeps them (None when unknown): the host's available
        memory here; GPU backends report their device's."""
        return host_available_memory()


def add_scaled(target, source, alpha: float = 1.0, *, beta: float = 1.0):
    """``beta * target + alpha * source`` as a new array: ``Backend.add_scaled``'s portable default, for code
    that has arrays but no backend (the functional optimizer cores)."""
    if beta != 1.0:
        target = beta * target
    return target + source if alpha == 1.0 else target + alpha * source


def scale(target, factor):
    """``target * factor`` as a new array: ``Backend.scale``'s portable default (see ``add_scaled``)."""
    return target * factor


# -- the recurrent cells, portable (standard array operations only) ---------------------------------------------


def sigmoid(xp, x):
    """σ(x) = ½ + ½ tanh(x/2): the same function, finite for any x, one transcendental call."""
    return 0.5 + 0.5 * xp.tanh(0.5 * x)


def lstm_cell_forward(xp, a, h_prev, c_prev, weight_hh):
    """``Backend.lstm_cell_forward`` with new arrays only; the cache is (gates, c_prev, tanh c)."""
    hidden = weight_hh.shape[0]
    if h_prev is not None:
        a = a + h_prev @ weight_hh
    gates = xp.concat([sigmoid(xp, a[:, :2 * hidden]), xp.tanh(a[:, 2 * hidden:3 * hidden]),
                       sigmoid(xp, a[:, 3 * hidden:])], axis=1)
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    c = i * g if c_prev is None else f * c_prev + i * g
    tanh_c = xp.tanh(c)
    return o * tanh_c, c, (gates, c_prev, tanh_c)


def _transposed(xp, weight, weight_t):
    return xp.matrix_transpose(weight) if weight_t is None else weight_t


def lstm_cell_backward(xp, dh, dc, cache, weight_hh_t, pass_back):
    """``Backend.lstm_cell_backward`` with new arrays only (``weight_hh_t``: W_hhᵀ, (4·hidden, hidden)):
        dc_t = dc + dh ⊙ o ⊙ (1 − tanh² c_t)
        da = [dc_t ⊙ g ⊙ i(1−i),  dc_t ⊙ c_{t−1} ⊙ f(1−f),  dc_t ⊙ i ⊙ (1−g²),  dh ⊙ tanh c_t ⊙ o(1−o)]
        dh_{t−1} = da W_hhᵀ,   dc_{t−1} = dc_t ⊙ f"""
    gates, c_prev, tanh_c = cache
    hidden = weight_hh_t.shape[1]
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dc_t = dh * o * (1.0 - tanh_c * tanh_c)
    if dc is not None:
        dc_t = dc_t + dc
    df = dc_t * c_prev * (f * (1.0 - f)) if c_prev is not None else xp.zeros_like(dh)
    da = xp.concat([dc_t * g * (i * (1.0 - i)), df, dc_t * i * (1.0 - g * g), dh * tanh_c * (o * (1.0 - o))],
                   axis=1)
    if not pass_back:
        return da, None, None
    return da, da @ weight_hh_t, dc_t * f


def gru_cell_forward(xp, a, h_prev, weight_hh, bias_hn):
    """``Backend.gru_cell_forward`` with new arrays only; the cache is (h_prev, [r z], n, h W_hn + b_hn)."""
    hidden = weight_hh.shape[0]
    two = 2 * hidden
    if h_prev is None:
        rz = sigmoid(xp, a[:, :two])
        hn = bias_hn
    else:
        hh = h_prev @ weight_hh
        rz = sigmoid(xp, a[:, :two] + hh[:, :two])
        hn = hh[:, two:] + bias_hn
    r, z = rz[:, :hidden], rz[:, hidden:]
    n = xp.tanh(a[:, two:] + r * hn)
    h = n - z * n if h_prev is None else n + z * (h_prev - n)
    return h, (h_prev, rz, n, hn)


def gru_cell_backward(xp, dh, cache, weight_hh_t, pass_back):
    """``Backend.gru_cell_backward`` with new arrays only (``weight_hh_t``: W_hhᵀ, (3·hidden, hidden)):
        da_n = dh ⊙ (1 − z) ⊙ (1 − n²),   dz = dh ⊙ (h_{t−1} − n),   [da_r, da_z] = [da_n ⊙ hn, dz] ⊙ σ'
        d_in = [da_r, da_z, da_n],   d_hh = [da_r, da_z, r ⊙ da_n],   dh_{t−1} = dh ⊙ z + d_hh W_hhᵀ"""
    h_prev, rz, n, hn = cache
    hidden = weight_hh_t.shape[1]
    r, z = rz[:, :hidden], rz[:, hidden:]
    da_n = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) if h_prev is not None else -(dh * n)
    da_rz = xp.concat([da_n * hn, dz], axis=1) * (rz * (1.0 - rz))
    d_in = xp.concat([da_rz, da_n], axis=1)
    d_hh = xp.concat([da_rz, r * da_n], axis=1)
    if not pass_back:
        return d_in, d_hh, None
    return d_in, d_hh, dh * z + d_hh @ weight_hh_t


#: What ``activate()`` returns on a library without a current device (reusable and re-entrant); callers on
#: hot paths compare with it to skip the ``with`` altogether.
NOTHING_TO_ACTIVATE = contextlib.nullcontext()


def host_available_memory() -> int | None:
    """Bytes of host memory a process can still get (None when unknown): the kernel's MemAvailable estimate,
    capped by the cgroup's memory limit (a container's) when one is set."""
    import os

    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:  # not Linux: what POSIX says, where it says it
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:  # cgroup v2 (a container's limit)
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as current:
            text = limit.read().strip()
            if text != "max":
                available = min(available, max(0, int(text) - int(current.read().strip())))
    except (OSError, ValueError):
        pass
    return available


def dtype_name(dtype) -> str:
    """A dtype of any library as a plain name: 'float32'."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        text = str(dtype)
        return text.rsplit(".", 1)[-1]


def describe_array(x) -> str:
    """Where an array lives, in words, for error messages: 'a numpy array (cpu)'."""
    import array_api_compat

    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        return f"a {type(x).__module__}.{type(x).__name__} (not an array)"
    library = xp.__name__.removeprefix("array_api_compat.")
    try:
        device = array_api_compat.device(x)
    except Exception:  # pragma: no cover - exotic arrays
        device = "?"
    return f"a {library} array on device {device}"
