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
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from . import convolution
from .allreduce import HostReducer
from .array_types import Array
from .random import DeviceRandom, Seed

#: The arrays a multi-tensor update returns, one per parameter (a list, or views of one flat buffer).
Updated = Sequence[Array]
#: A Python number or a 0-d array of the backend (a device scalar).
Scalar = Any
#: A list of arrays, or ``FlatTensors`` (views of one flat array, which the multi-tensor methods read ``.flat`` of
#: after checking): typed loosely for that reason.
Arrays = Any


class Backend:
    """An array library bound to one device.

    Subclasses set the attributes in ``__init__`` and implement the methods that
    raise ``NotImplementedError`` here.
    """

    #: Registered family name, such as ``"numpy"`` or ``"torch"``.
    library: str = ""

    #: How this library compiles a whole training step (``Trainer(compile=...)``), as ``(name, kind)``: the name a
    #: user may give (``compile="jit"``) and the kind of step it needs: ``"pure"`` (the step traced as a pure
    #: function of its arrays: ``compile_function`` with static and donated arguments, and ``trace_shapes``),
    #: ``"in_place"`` (the step traced as it runs, arrays updated in place: ``compile_function``) or
    #: ``"graph_capture"`` (CUDA Graphs recorded once and replayed). None (the default): steps run eagerly only.
    step_compiler: tuple[str, str] | None = None

    def __init__(self, name: str, xp: Any, device: Any, *, device_name: str, version: str):
        self.name = name  # full spec, such as "torch:cuda:0"
        self.xp = xp
        self.device = device
        self.device_name = device_name
        self.version = version
        self.float_dtype = xp.float32

    def __repr__(self) -> str:
        return f"<Backend {self.name} ({self.device_name})>"

    # Backends are shared singletons: copying a layer must not copy its backend.
    def __copy__(self) -> Backend:
        return self

    def __deepcopy__(self, memo: dict) -> Backend:
        return self

    # -- the device ----------------------------------------------------------
    def activate(self) -> contextlib.AbstractContextManager:
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

    #: How the trainer shuffles an epoch: True, permute the whole dataset once and hand out slices (two
    #: gathers an epoch, not two a step: fewer kernel launches, what a GPU wants); False (the default), gather
    #: each batch's rows (on a CPU the rows then go to the matrix products from the cache, and no second copy
    #: of the data is written every epoch).
    permutes_epochs: bool = False

    def owns(self, x: Any) -> bool:
        """True when ``x`` is an array of this library on this device (a cheap check)."""
        raise NotImplementedError

    # -- creation and transfer ----------------------------------------------
    def dtype(self, name_or_dtype: Any) -> Any:
        """Resolve ``"float32"`` (or a dtype of this library) to this library's dtype."""
        if isinstance(name_or_dtype, str):
            try:
                return getattr(self.xp, name_or_dtype)
            except AttributeError:
                raise TypeError(f"unknown dtype {name_or_dtype!r}; expected a name such as 'float32'") from None
        return name_or_dtype

    def asarray(self, obj: Any, dtype: Any = None) -> Array:
        """An array on this backend's device (``obj``: a Python scalar, list or array of this library)."""
        return self.xp.asarray(obj, dtype=dtype, device=self.device)

    def from_host(self, host_array: Any, dtype: Any = None) -> Array:
        """Copy a NumPy array (or anything ``numpy.asarray`` accepts) onto the device.

        Always a copy, never a view: later changes to either side do not affect the other.
        float64 host data becomes the backend's default float32 unless ``dtype`` says otherwise.
        """
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        return self.xp.asarray(host_array, dtype=dtype, device=self.device, copy=True)

    def to_host(self, x: Array) -> np.ndarray:
        """Copy an array of this backend to a NumPy array on the host (a copy, never a view)."""
        raise NotImplementedError

    # -- what the standard lacks --------------------------------------------
    def random(self, seed: Seed) -> DeviceRandom:
        """A seeded generator that draws on the device."""
        raise NotImplementedError

    def scatter_add(self, target: Array, indices: Array, values: Array) -> Array:
        """``target`` with ``values[i]`` added to row ``indices[i]`` (axis 0), duplicates accumulating.

        Returns the result: ``target`` itself where the library updates in place, a new array where it cannot
        (use the returned array either way). (Plain ``target[indices] += values`` keeps only one of several
        duplicate indices.)
        """
        raise NotImplementedError

    # -- updates: portable defaults, in place where the library allows -----------
    def add_scaled(self, target: Array, source: Array, alpha: Scalar = 1.0, *, beta: Scalar = 1.0) -> Array:
        """``beta * target + alpha * source`` (BLAS ``axpby``): every optimizer update, and the layers' additions
        to arrays of their own. ``source``: an array of ``target``'s shape, one that broadcasts to it, or a number.

        Returns the result; use it, not ``target``, afterwards. This default returns a new array, which is right
        for every library, immutable ones included. NumPy, PyTorch and CuPy write into ``target`` and return it
        (NumPy: one fused BLAS ``axpy`` pass for large arrays; PyTorch: ``mul_``/``add_``), with no temporary
        for ``alpha * source`` and no new array, which halves the memory traffic of a large update.
        """
        with self.activate():
            return add_scaled(target, source, alpha, beta=beta)

    def scale(self, target: Array, factor: Scalar) -> Array:
        """``target * factor`` (``factor``: a number or a 0-d array of this backend): gradient clipping,
        decoupled weight decay. Returns the result; NumPy, PyTorch and CuPy scale ``target`` in place."""
        with self.activate():
            return scale(target, factor)

    def at_set(self, x: Array, index: Any, values: Array | float) -> Array:
        """``x`` with ``x[index] = values``: ``array_api_extra.at(x, index).set(values)``, which writes into ``x``
        where the library allows it (and returns ``x``) and otherwise returns an updated copy (JAX: ``.at[]``).
        Use the returned array either way."""
        import array_api_extra as xpx  # lazy: ~20 ms that `import backends` (the CLI's start) does not pay

        with self.activate():
            return xpx.at(x, index).set(values, xp=self.xp)

    def at_add(self, x: Array, index: Any, values: Array | float) -> Array:
        """``x`` with ``x[index] += values`` (``index``: integers and slices; within one call no element is
        named twice): ``array_api_extra.at(x, index).add(values)``, in place where the library allows it.
        Use the returned array either way."""
        import array_api_extra as xpx  # lazy: ~20 ms that `import backends` (the CLI's start) does not pay

        with self.activate():
            return xpx.at(x, index).add(values, xp=self.xp)

    # -- fused and multi-tensor capabilities (issue 13) ------------------------------
    # What a training step is made of, each one call here and one kernel (or a GEMM and one kernel) on a GPU:
    # a dense layer with its bias and activation, softmax cross-entropy with its gradient and the step's
    # metrics, and each optimizer's update of every parameter at once. The defaults below are portable (array
    # API operations that return new arrays: right for every library, immutable ones and JAX's traced arrays
    # included); NumPy, PyTorch and CuPy override them with fewer, in-place passes. Learning rates and step
    # counts may be Python numbers or 0-d arrays of this backend (device scalars: a compiled or captured step
    # reads them from the device, so a schedule changes a value, not the program).

    def dense_forward(self, x: Array, weight: Array, bias: Array | None = None, activation: str | None = None, *,
                      negative_slope: float = 0.01) -> tuple[Array, tuple]:
        """``activation(x @ weight + bias)`` and what ``dense_backward`` needs: ``(y, saved)``.

        ``activation``: one of ``FUSED_ACTIVATIONS`` (None: none); ``negative_slope`` is LeakyReLU's. The
        formulas are those of the activation layers (``backprop/layers/activations.py``)."""
        with self.activate():
            z = x @ weight
            if bias is not None:
                z = z + bias
            y = activation_forward(self.xp, z, activation, negative_slope)
        kept = z if activation == "gelu" else y  # what the derivative is computed from
        return y, (x, weight, kept, activation, negative_slope, bias is not None)

    def dense_backward(self, grad_output: Array, saved: tuple, *, input_grad: bool = True,
                       weight_grad_out: Array | None = None,
                       bias_grad_out: Array | None = None) -> tuple[Array | None, Array, Array | None]:
        """``(grad_input, grad_weight, grad_bias)`` for a ``dense_forward`` call (``grad_input`` None without
        ``input_grad``, ``grad_bias`` None without a bias). ``weight_grad_out`` / ``bias_grad_out``: arrays of
        the gradients' shapes that a backend may write the gradients into and return (NumPy does: a flat
        gradient buffer's views); the default returns new arrays."""
        x, weight, kept, activation, slope, has_bias = saved
        xp = self.xp
        with self.activate():
            grad = activation_backward(xp, grad_output, kept, activation, slope)
            inputs, flat_grad = x, grad
            if inputs.ndim > 2:  # every position is one more example for the weight gradient
                inputs = xp.reshape(inputs, (-1, weight.shape[0]))
                flat_grad = xp.reshape(grad, (-1, weight.shape[1]))
            if inputs.shape[0] == 1:  # one example: an outer product (a matmul with an inner size of 1 is slow)
                grad_weight = self.outer(inputs[0, ...], flat_grad[0, ...])
            else:
                grad_weight = xp.matrix_transpose(inputs) @ flat_grad
            grad_bias = xp.sum(flat_grad, axis=0) if has_bias else None
            grad_input = grad @ xp.matrix_transpose(weight) if input_grad else None
            # Only backends that make flat buffers (and so can write into arrays) are handed places to write to.
            if weight_grad_out is not None:
                grad_weight = self.at_set(weight_grad_out, ..., grad_weight)
            if bias_grad_out is not None and grad_bias is not None:
                grad_bias = self.at_set(bias_grad_out, ..., grad_bias)
        return grad_input, grad_weight, grad_bias

    def softmax_cross_entropy(self, logits: Array, labels: Array, *, grad_scale: Scalar = 1.0,
                              metrics: Array | None = None,
                              with_grad: bool = True) -> tuple[Array, Array | None, Array | None]:
        """Softmax cross-entropy of ``logits`` (..., classes) against integer ``labels`` (...), fused with its
        gradient and, when ``metrics`` is given, with the step's metrics: ``(loss, grad, metrics)``.

        ``loss``: the mean over positions (0-d); ``grad``: dL/dlogits times ``grad_scale`` (None without
        ``with_grad``); ``metrics``: ``metrics + [loss · examples, correct predictions, 1 if the loss is not
        finite else 0, 0]`` (see ``METRICS``; ``examples`` is ``logits.shape[0]``), or None. No one-hot array
        of the labels is made (the default compares labels with a class index, which XLA fuses away; NumPy,
        PyTorch and CuPy index the labels' entries)."""
        xp = self.xp
        with self.activate():
            classes = logits.shape[-1]
            positions = _size(logits) // classes
            shifted = logits - xp.max(logits, axis=-1, keepdims=True)
            log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
            index = xp.astype(labels, xp.int64)[..., None] if labels.dtype != xp.int64 else labels[..., None]
            loss = -xp.sum(xp.take_along_axis(log_probs, index, axis=-1)) / positions
            loss = xp.asarray(loss)  # NumPy's sum gives a scalar; keep a 0-d array
            grad = None
            if with_grad:
                hit = xp.astype(labels[..., None] == xp.arange(classes, dtype=labels.dtype, device=self.device),
                                logits.dtype)
                grad = (xp.exp(log_probs) - hit) * (grad_scale / positions)
            if metrics is not None:
                metrics = self.add_step_metrics(metrics, loss, _count_correct(xp, logits, labels), logits.shape[0])
        return loss, grad, metrics

    def add_step_metrics(self, metrics: Array, loss: Array, correct: Array | int, examples: int) -> Array:
        """``metrics`` (see ``METRICS``) plus one batch's: ``loss · examples``, ``correct``, and 1 in the
        non-finite count when ``loss`` is NaN or infinite. A new array (the default); used for losses without a
        fused path."""
        xp = self.xp
        with self.activate():
            dtype = metrics.dtype
            loss = xp.astype(loss, dtype) if loss.dtype != dtype else loss
            part = xp.stack([loss * examples, xp.astype(correct, dtype),
                             xp.astype(xp.logical_not(xp.isfinite(loss)), dtype), xp.zeros((), dtype=dtype,
                                                                                          device=self.device)])
            return metrics + part

    def close_step_metrics(self, metrics: Array) -> Array:
        """``metrics`` at the end of an optimizer step: one more good step while no loss so far was non-finite
        (the trainer's error names the first bad step from it)."""
        xp = self.xp
        with self.activate():
            good = xp.astype(metrics[METRICS.index("nonfinite")] == 0, metrics.dtype)
            zero = xp.zeros((), dtype=metrics.dtype, device=self.device)
            return metrics + xp.stack([zero, zero, zero, good])

    def tensor_norms(self, arrays: Sequence[Array], *, add_to: Array | None = None) -> Array:
        """The L2 norm of each array, as one 1-d array on the device (gradient norms for clipping and for the
        trainer's diagnostics), plus ``add_to`` (a 1-d array of as many sums, or None)."""
        xp = self.xp
        with self.activate():
            norms = xp.stack([xp.sqrt(xp.sum(a * a)) for a in arrays])
            return norms if add_to is None else add_to + norms

    def clip_coefficient(self, norms: Array, max_norm: float) -> Array:
        """``min(1, max_norm / (total + 1e-6))`` with ``total`` the global norm of arrays whose norms are
        ``norms`` (a 0-d array; as ``torch.nn.utils.clip_grad_norm_``). No Python ``if`` reads a device value."""
        xp = self.xp
        with self.activate():
            total = xp.sqrt(xp.sum(norms * norms))
            coefficient = xp.minimum(max_norm / (total + 1e-6), xp.ones((), dtype=norms.dtype, device=self.device))
            return xp.asarray(coefficient, device=self.device)  # NumPy's 0-d results are scalars

    def multi_tensor_scale(self, arrays: Arrays, factor: Scalar) -> list:
        """Each array times ``factor`` (a number or a 0-d array): clipping's scaling of every gradient at once.
        Returns the results (the arrays themselves where the backend scales in place)."""
        if _all_flat(arrays):
            return self._into_flat(arrays, [self.scale(arrays.flat, factor)])
        return [self.scale(a, factor) for a in arrays]

    def multi_tensor_sgd(self, params: Arrays, grads: Arrays,
                         momentum_buffers: Arrays | None = None, *, lr: Scalar, momentum: float = 0.0,
                         nesterov: bool = False, weight_decay: float = 0.0) -> tuple[Updated, Updated | None]:
        """SGD (with momentum, Nesterov momentum and L2 weight decay, as ``torch.optim.SGD`` without
        dampening) of every parameter at once: the updated ``(params, momentum_buffers)`` (buffers None without
        momentum; zeros at first, which gives PyTorch's first step)."""
        with self.activate():
            if _all_flat(params, grads, momentum_buffers):
                (param,), buffers = sgd_update(self.add_scaled, [params.flat], [grads.flat], _flats(momentum_buffers),
                                               lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
                return self._into_flat(params, [param]), self._into_flat(momentum_buffers, buffers)
            return sgd_update(self.add_scaled, params, grads, momentum_buffers, lr=lr, momentum=momentum,
                              nesterov=nesterov, weight_decay=weight_decay)

    def multi_tensor_adam(self, params: Arrays, grads: Arrays, exp_avgs: Arrays,
                          exp_avg_sqs: Arrays, *, lr: Scalar, step: Scalar, beta1: float, beta2: float,
                          eps: float, weight_decay: float = 0.0,
                          decoupled_weight_decay: bool = False) -> tuple[Updated, Updated, Updated]:
        """Adam / AdamW (``decoupled_weight_decay``) of every parameter at once, ``step`` (this step's number,
        from 1; the same for all of them) for the bias corrections: the updated
        ``(params, exp_avgs, exp_avg_sqs)``."""
        options = {"lr": lr, "step": step, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay,
                   "decoupled_weight_decay": decoupled_weight_decay}
        with self.activate():
            if _all_flat(params, grads, exp_avgs, exp_avg_sqs):
                (param,), (m,), (v,) = adam_update(self.xp, self.add_scaled, self.scale, [params.flat], [grads.flat],
                                                   [exp_avgs.flat], [exp_avg_sqs.flat], **options)
                return self._into_flat(params, [param]), self._into_flat(exp_avgs, [m]), self._into_flat(exp_avg_sqs,
                                                                                                       [v])
            return adam_update(self.xp, self.add_scaled, self.scale, params, grads, exp_avgs, exp_avg_sqs, **options)

    def multi_tensor_rmsprop(self, params: Arrays, grads: Arrays, square_avgs: Arrays,
                             momentum_buffers: Arrays | None = None, *, lr: Scalar, alpha: float,
                             eps: float, momentum: float = 0.0,
                             weight_decay: float = 0.0) -> tuple[Updated, Updated, Updated | None]:
        """RMSprop (not centered, as ``torch.optim.RMSprop``) of every parameter at once: the updated
        ``(params, square_avgs, momentum_buffers)``."""
        options = {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum, "weight_decay": weight_decay}
        with self.activate():
            if _all_flat(params, grads, square_avgs, momentum_buffers):
                (param,), (avg,), buffers = rmsprop_update(self.xp, self.add_scaled, [params.flat], [grads.flat],
                                                           [square_avgs.flat], _flats(momentum_buffers), **options)
                return (self._into_flat(params, [param]), self._into_flat(square_avgs, [avg]),
                        self._into_flat(momentum_buffers, buffers))
            return rmsprop_update(self.xp, self.add_scaled, params, grads, square_avgs, momentum_buffers, **options)

    def multi_tensor_adagrad(self, params: Arrays, grads: Arrays, state_sums: Arrays, *,
                             lr: Scalar, eps: float, weight_decay: float = 0.0) -> tuple[Updated, Updated]:
        """AdaGrad (as ``torch.optim.Adagrad`` without lr_decay) of every parameter at once: the updated
        ``(params, state_sums)``."""
        with self.activate():
            if _all_flat(params, grads, state_sums):
                (param,), (total,) = adagrad_update(self.xp, self.add_scaled, [params.flat], [grads.flat],
                                                    [state_sums.flat], lr=lr, eps=eps, weight_decay=weight_decay)
                return self._into_flat(params, [param]), self._into_flat(state_sums, [total])
            return adagrad_update(self.xp, self.add_scaled, params, grads, state_sums, lr=lr, eps=eps,
                                  weight_decay=weight_decay)

    def compile_function(self, function: Callable, *, static_argnums: Sequence[int] = (),
                         donate_argnums: Sequence[int] = ()) -> Callable | None:
        """``function`` compiled by this library's compiler (JAX: ``jax.jit``; PyTorch: ``torch.compile``), or
        None where it has none (the default). ``static_argnums`` / ``donate_argnums`` as ``jax.jit``'s (a
        compiler without them ignores them)."""
        return None

    def trace_shapes(self, function: Callable, *args: Any) -> Any:
        """Run ``function`` on abstract values of ``args`` (JAX: ``jax.eval_shape``: Python only, nothing is
        computed or compiled) and return the shapes of its results; NotImplementedError elsewhere."""
        raise NotImplementedError(f"{self.name} cannot trace a function abstractly")

    def flat_buffer(self, shapes: Sequence[tuple[int, ...]], dtype: Any) -> tuple[Array, list] | None:
        """``(flat, views)``: one 1-d array and views of it shaped as ``shapes`` (in order, back to back), so an
        update of every parameter is one pass over ``flat``; None where the library cannot make such views
        (immutable arrays) or gains nothing from them. The default: None."""
        return None

    def _into_flat(self, views, results):
        """``views`` (``FlatTensors``) after an update over their flat array gave ``results`` (a list of one
        array): the same views, the result written into the flat array unless the update already did."""
        if views is None:
            return None
        if results[0] is not views.flat:
            self.at_set(views.flat, ..., results[0])
        return views

    def set_scalar(self, scalar: Array | None, value: float) -> Array:
        """A 0-d array holding ``value`` (a device scalar: a learning rate, a step number): ``scalar``
        overwritten where the library allows (a compiled or captured program keeps reading the same memory),
        else a new array. ``scalar`` None: a new one, float64 where the backend has it (a Python number's
        precision; the updates cast it to each parameter's dtype, as they would the number)."""
        with self.activate():
            if scalar is not None:
                dtype = scalar.dtype
            else:
                dtype = self.xp.float64 if self.supports_float64 else self.xp.float32
            return self.xp.asarray(value, dtype=dtype, device=self.device)

    # -- optional fast paths -------------------------------------------------
    def outer(self, a: Array, b: Array) -> Array:
        """The outer product of two vectors, a new ``(len(a), len(b))`` array with ``[i, j] = a[i] * b[j]``:
        the weight gradient of a one-example batch. Backends override it with BLAS where that is faster."""
        xp = self.xp
        with self.activate():
            return xp.reshape(a, (-1, 1)) * xp.reshape(b, (1, -1))

    def conv2d_forward(self, x: Array, weight: Array, bias: Array | None, *, stride: tuple[int, int],
                       padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[Array, Any]:
        """The 2-D convolution (cross-correlation, NCHW, as PyTorch's ``conv2d``) and what ``conv2d_backward``
        needs: ``(y, saved)``.

        ``x``: (N, C, H, W); ``weight``: (O, C, kh, kw); ``bias``: (O,) or None; ``stride``, ``padding``
        (zeros) and ``dilation``: (h, w) pairs; the caller has checked that the output is not empty. ``y``:
        (N, O, OH, OW). The default is the portable im2col convolution (``backends/convolution.py``: standard
        array operations and this backend's ``at_set``/``at_add``, so it runs on every backend); NumPy,
        PyTorch and JAX override both methods with faster ones. ``saved`` is opaque: only this backend's
        ``conv2d_backward`` reads it."""
        with self.activate():
            return convolution.conv2d_forward(self, x, weight, bias, stride=stride, padding=padding,
                                              dilation=dilation)

    def conv2d_backward(self, grad_output: Array, saved: Any, *, bias: bool,
                        input_grad: bool = True) -> tuple[Array | None, Array, Array | None]:
        """``(grad_input, grad_weight, grad_bias)`` for a convolution done by ``conv2d_forward``
        (``grad_bias`` is None when ``bias`` is False, ``grad_input`` None when ``input_grad`` is False)."""
        with self.activate():
            return convolution.conv2d_backward(self, grad_output, saved, bias=bias, input_grad=input_grad)

    def allreducer(self, communicator: Any) -> Any:
        """The object that sums a flat gradient buffer of this backend over the ranks of ``communicator``
        (``allreduce(flat, flag) -> (summed flat, summed flag)``). The default goes through the host: device →
        host copy, the communicator's in-place host sum (MPI), host → device; a backend with a collective
        between devices overrides it (CuPy: NCCL, ``backends/nccl.py``)."""
        return HostReducer(communicator, self)

    # -- fused recurrent cells ----------------------------------------------------------------------------
    #: True when ``lstm_cell_backward`` and ``gru_cell_backward`` write their gate gradients into the ``out``
    #: arrays they are given (and return them): a recurrent layer then lets every step write into one
    #: (time, batch, gates) array instead of stacking the steps afterwards. The portable defaults ignore
    #: ``out``.
    cells_write_out: bool = False

    def lstm_cell_forward(self, a: Array, h_prev: Array | None, c_prev: Array | None,
                          weight_hh: Array) -> tuple[Array, Array, tuple]:
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

    def lstm_cell_backward(self, dh: Array, dc: Array | None, cache: tuple, weight_hh: Array, *, pass_back: bool,
                           out: Array | None = None,
                           weight_hh_t: Array | None = None) -> tuple[Array, Array | None, Array | None]:
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

    def gru_cell_forward(self, a: Array, h_prev: Array | None, weight_hh: Array, bias_hn: Array) -> tuple[Array, tuple]:
        """One GRU step, PyTorch's formulation and gate order (r, z, n).

        ``a``: ``(batch, 3·hidden)``, x_t W_ih + b (the caller's own: the backend may overwrite it);
        ``h_prev``: ``(batch, hidden)`` or None (the zero state); ``weight_hh``: ``(hidden, 3·hidden)``;
        ``bias_hn``: ``(hidden,)``, the bias inside the reset gate's product. Returns ``(h, cache)``."""
        with self.activate():
            return gru_cell_forward(self.xp, a, h_prev, weight_hh, bias_hn)

    def gru_cell_backward(self, dh: Array, cache: tuple, weight_hh: Array, *, pass_back: bool, out: Any = None,
                          weight_hh_t: Array | None = None) -> tuple[Array, Array, Array | None]:
        """The chain rule through one GRU step, given dL/dh_t ``dh`` (read only).

        Returns ``(d_in, d_hh, dh_prev)``: dL/d(pre-activations) as ``weight_ih`` and the bias see them, as
        ``weight_hh`` sees them (they differ in the n block: r ⊙ da_n), both ``(batch, 3·hidden)``, and dL/dh_{t−1}
        (None unless ``pass_back``). ``out``: None or a pair of arrays for ``d_in`` and ``d_hh``;
        ``weight_hh_t``: as for ``lstm_cell_backward``."""
        with self.activate():
            return gru_cell_backward(self.xp, dh, cache, _transposed(self.xp, weight_hh, weight_hh_t), pass_back)

    def transposed_for_products(self, weight: Array) -> Array | None:
        """``weight``ᵀ laid out for the matrix products of many steps in a row (a recurrent layer's backward
        pass asks once and hands the result to every step's cell as ``weight_hh_t``), or None (the default)
        when using the transposed view at each step is as fast. NumPy makes a C-contiguous copy: OpenBLAS
        multiplies by a transposed view 20-25% slower (one thread, 64x512 by 512x128)."""
        return None

    def limit_threads(self, threads: int | None) -> ThreadLimit:
        """Use at most ``threads`` CPU threads for this library's kernels (BLAS, OpenMP).

        Several processes sharing a machine (MPI ranks) need this: oversubscribed BLAS threads can make each
        step tens of times slower; so do the small per-step products of a recurrent layer on a busy machine.
        The returned ``ThreadLimit`` is true when the limit holds. The limit stays; used as a context manager
        (``with backend.limit_threads(1): ...``) it gives the previous limits back at the end of the block.
        ``threads`` None sets nothing. The default does nothing and says so (a false ``ThreadLimit``); NumPy
        (threadpoolctl) and PyTorch (``torch.set_num_threads``) override it, and so does a backend whose kernels
        use no CPU threads at all (CuPy: the limit holds as it is)."""
        return ThreadLimit(False)

    def synchronize(self) -> None:
        """Wait for all queued work on the device (needed before timing GPU work)."""

    def memory_stats(self) -> dict[str, int]:
        """Memory figures the library reports, in bytes; empty when it reports none."""
        return {}

    def available_memory(self) -> int | None:
        """Bytes free for new arrays where this backend keeps them (None when unknown): the host's available
        memory here; GPU backends report their device's."""
        return host_available_memory()


def add_scaled(target: Array, source: Array, alpha: Scalar = 1.0, *, beta: Scalar = 1.0) -> Array:
    """``beta * target + alpha * source`` as a new array: ``Backend.add_scaled``'s portable default, for code
    that has arrays but no backend (the functional optimizer cores)."""
    if not _is_number(beta) or beta != 1.0:  # a 0-d array is never compared on the host
        target = beta * target
    return target + source if _is_number(alpha) and alpha == 1.0 else target + alpha * source


def scale(target: Array, factor: Scalar) -> Array:
    """``target * factor`` as a new array: ``Backend.scale``'s portable default (see ``add_scaled``)."""
    return target * factor


# -- the recurrent cells, portable (standard array operations only) ---------------------------------------------


def sigmoid(xp: Any, x: Array) -> Array:
    """σ(x) = ½ + ½ tanh(x/2): the same function, finite for any x, one transcendental call."""
    return 0.5 + 0.5 * xp.tanh(0.5 * x)


def lstm_cell_forward(xp: Any, a: Array, h_prev: Array | None, c_prev: Array | None,
                      weight_hh: Array) -> tuple[Array, Array, tuple]:
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


def lstm_cell_backward(xp: Any, dh: Array, dc: Array | None, cache: tuple, weight_hh_t: Array,
                       pass_back: bool) -> tuple[Array, Array | None, Array | None]:
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


def gru_cell_forward(xp: Any, a: Array, h_prev: Array | None, weight_hh: Array,
                     bias_hn: Array) -> tuple[Array, tuple]:
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


def gru_cell_backward(xp: Any, dh: Array, cache: tuple, weight_hh_t: Array,
                      pass_back: bool) -> tuple[Array, Array, Array | None]:
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


#: The order of the step metrics vector the trainer keeps on the device (``softmax_cross_entropy``,
#: ``add_step_metrics``, ``close_step_metrics``): the sum of batch losses times their examples, correct
#: predictions, batches whose loss was not finite, optimizer steps completed while every loss was finite.
METRICS = ("loss_sum", "correct", "nonfinite", "good_steps")

#: Activations ``dense_forward`` fuses (their formulas are the activation layers').
FUSED_ACTIVATIONS = (None, "relu", "leaky_relu", "tanh", "sigmoid", "gelu")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def activation_forward(xp: Any, z: Array, activation: str | None, negative_slope: float = 0.01) -> Array:
    """``activation(z)`` as the activation layers compute it."""
    if activation is None:
        return z
    if activation == "relu":
        return xp.maximum(z, 0.0)
    if activation == "leaky_relu":
        return xp.maximum(z, negative_slope * z)  # for 0 <= slope <= 1
    if activation == "tanh":
        return xp.tanh(z)
    if activation == "sigmoid":
        return 0.5 + 0.5 * xp.tanh(0.5 * z)  # finite for any z, no branch per element
    if activation == "gelu":
        return 0.5 * z * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z * z * z)))
    raise ValueError(f"unknown fused activation {activation!r}; expected one of {FUSED_ACTIVATIONS}")


def activation_backward(xp: Any, grad: Array, kept: Array, activation: str | None,
                        negative_slope: float = 0.01) -> Array:
    """dL/dz from dL/dy, given ``kept``: the activation's output y (the pre-activation z for GELU)."""
    if activation is None:
        return grad
    if activation == "relu":
        return grad * xp.astype(kept > 0, grad.dtype)
    if activation == "leaky_relu":  # y > 0 exactly where z > 0
        return grad * (negative_slope + (1.0 - negative_slope) * xp.astype(kept > 0, grad.dtype))
    if activation == "tanh":
        return grad * (1.0 - kept * kept)
    if activation == "sigmoid":
        return grad * kept * (1.0 - kept)
    if activation == "gelu":
        z = kept
        t = xp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z * z * z))
        du_dz = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * z * z)
        return grad * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du_dz)
    raise ValueError(f"unknown fused activation {activation!r}; expected one of {FUSED_ACTIVATIONS}")


def _count_correct(xp, logits, labels):
    return xp.sum(xp.astype(xp.argmax(logits, axis=-1) == labels, logits.dtype))


def _size(x) -> int:
    n = 1
    for d in x.shape:
        n *= d
    return n


def _is_number(value) -> bool:
    return isinstance(value, (int, float))


# -- the optimizers' updates, portable: one array at a time, each update through ``update`` (``add_scaled``:
# in place where the backend writes in place, else a new array). ``lr`` and ``step`` may be Python numbers or
# 0-d arrays; a 0-d array is cast to each parameter's dtype, as a Python number would be.

def _scalar_for(value, array):
    if _is_number(value) or value.dtype == array.dtype:
        return value
    import array_api_compat  # lazy: ~20 ms that `import backends` (the CLI's start) does not pay

    return array_api_compat.array_namespace(value).astype(value, array.dtype)


def sgd_update(update: Callable, params: Sequence[Array], grads: Sequence[Array],
               momentum_buffers: Sequence[Array] | None = None, *, lr: Scalar, momentum: float = 0.0,
               nesterov: bool = False, weight_decay: float = 0.0) -> tuple[Updated, Updated | None]:
    """The portable SGD update (see ``Backend.multi_tensor_sgd``); ``update``: an ``add_scaled``."""
    new_params: list = []
    new_buffers: list | None = [] if momentum != 0 else None
    for i, (param, grad) in enumerate(zip(params, grads)):
        if weight_decay != 0:
            grad = grad + weight_decay * param
        if momentum != 0:
            assert momentum_buffers is not None and new_buffers is not None  # momentum comes with its buffers
            buf = update(momentum_buffers[i], grad, 1.0, beta=momentum)
            new_buffers.append(buf)
            grad = grad + momentum * buf if nesterov else buf
        new_params.append(update(param, grad, -lr if _is_number(lr) else -_scalar_for(lr, param)))
    return new_params, new_buffers


def adam_update(xp: Any, update: Callable, scale: Callable, params: Sequence[Array], grads: Sequence[Array],
                exp_avgs: Sequence[Array], exp_avg_sqs: Sequence[Array], *, lr: Scalar, step: Scalar,
                beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
                decoupled_weight_decay: bool = False) -> tuple[Updated, Updated, Updated]:
    """The portable Adam/AdamW update (see ``Backend.multi_tensor_adam``)."""
    if _is_number(step):
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    else:  # a device scalar: the corrections stay on the device
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = xp.sqrt(1 - beta2 ** step)
    step_size = lr / bias_correction1
    new_params, new_avgs, new_avg_sqs = [], [], []
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        if weight_decay != 0:
            if decoupled_weight_decay:
                param = scale(param, 1 - _scalar_for(lr, param) * weight_decay)
            else:
                grad = grad + weight_decay * param
        exp_avg = update(exp_avg, grad, 1 - beta1, beta=beta1)
        exp_avg_sq = update(exp_avg_sq, grad * grad, 1 - beta2, beta=beta2)
        denom = xp.sqrt(exp_avg_sq) / _scalar_for(bias_correction2_sqrt, param) + eps
        new_params.append(update(param, exp_avg / denom, -_scalar_for(step_size, param)))
        new_avgs.append(exp_avg)
        new_avg_sqs.append(exp_avg_sq)
    return new_params, new_avgs, new_avg_sqs


def rmsprop_update(xp: Any, update: Callable, params: Sequence[Array], grads: Sequence[Array],
                   square_avgs: Sequence[Array], momentum_buffers: Sequence[Array] | None = None, *, lr: Scalar,
                   alpha: float, eps: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> tuple[Updated, Updated, Updated | None]:
    """The portable RMSprop update (see ``Backend.multi_tensor_rmsprop``)."""
    new_params: list = []
    new_avgs: list = []
    new_buffers: list | None = [] if momentum > 0 else None
    for i, (param, grad, square_avg) in enumerate(zip(params, grads, square_avgs)):
        if weight_decay != 0:
            grad = grad + weight_decay * param
        square_avg = update(square_avg, grad * grad, 1 - alpha, beta=alpha)
        new_avgs.append(square_avg)
        avg = xp.sqrt(square_avg) + eps
        if momentum > 0:
            assert momentum_buffers is not None and new_buffers is not None  # momentum comes with its buffers
            buf = update(momentum_buffers[i], grad / avg, 1.0, beta=momentum)
            new_buffers.append(buf)
            new_params.append(update(param, buf, -_scalar_for(lr, param)))
        else:
            new_params.append(update(param, grad / avg, -_scalar_for(lr, param)))
    return new_params, new_avgs, new_buffers


def adagrad_update(xp: Any, update: Callable, params: Sequence[Array], grads: Sequence[Array],
                   state_sums: Sequence[Array], *, lr: Scalar, eps: float,
                   weight_decay: float = 0.0) -> tuple[Updated, Updated]:
    """The portable AdaGrad update (see ``Backend.multi_tensor_adagrad``)."""
    new_params, new_sums = [], []
    for param, grad, state_sum in zip(params, grads, state_sums):
        if weight_decay != 0:
            grad = grad + weight_decay * param
        state_sum = update(state_sum, grad * grad, 1.0)
        new_sums.append(state_sum)
        new_params.append(update(param, grad / (xp.sqrt(state_sum) + eps), -_scalar_for(lr, param)))
    return new_params, new_sums


def _all_flat(*lists) -> bool:
    """Every list that is given is ``FlatTensors`` over a flat array."""
    return all(isinstance(lst, FlatTensors) and lst.flat is not None for lst in lists if lst is not None)


def _flats(views):
    return None if views is None else [views.flat]


def flat_views(xp: Any, flat: Array, shapes: Sequence[tuple[int, ...]]) -> list:
    """Views of the 1-d array ``flat`` shaped as ``shapes``, back to back from its start."""
    views, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        views.append(xp.reshape(flat[offset:offset + n], tuple(shape)))
        offset += n
    return views


class FlatTensors(list):
    """A list of arrays that are views, back to back and in order, of one 1-d array ``flat`` (see
    ``Backend.flat_buffer``): a multi-tensor update may run once over ``flat`` instead of once per array."""

    __slots__ = ("flat",)

    def __init__(self, views: Iterable[Array], flat: Array | None):
        super().__init__(views)
        self.flat = flat


class ThreadLimit:
    """What ``Backend.limit_threads`` did: true when the limit holds (``applied``), false when the backend could
    not set one. A context manager too: on exit it gives back the limits that were in place before (once; a
    limit that was not applied has nothing to give back)."""

    def __init__(self, applied: bool, restore: Callable[[], object] | None = None):
        self.applied = applied
        self._restore = restore

    def __bool__(self) -> bool:
        return self.applied

    def __repr__(self) -> str:
        return f"ThreadLimit(applied={self.applied})"

    def restore(self) -> None:
        """Give back the limits that were in place before this one (nothing after the first call)."""
        restore, self._restore = self._restore, None
        if restore is not None:
            restore()

    def __enter__(self) -> ThreadLimit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()


#: What ``activate()`` returns on a library without a current device (reusable and re-entrant); callers on
#: hot paths compare with it to skip the ``with`` altogether.
NOTHING_TO_ACTIVATE = contextlib.nullcontext()


def host_available_memory() -> int | None:
    """Bytes of host memory a process can still get (None when unknown): the kernel's MemAvailable estimate,
    capped by the cgroup's memory limit (a container's) when one is set."""
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


def dtype_name(dtype: Any) -> str:
    """A dtype of any library as a plain name: 'float32'."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        text = str(dtype)
        return text.rsplit(".", 1)[-1]


def describe_array(x: Any) -> str:
    """Where an array lives, in words, for error messages: 'a numpy array (cpu)'."""
    import array_api_compat  # lazy: ~20 ms that `import backends` (the CLI's start) does not pay

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
