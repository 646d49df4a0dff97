"""The ``Layer`` base class: the forward/backward protocol, parameters, and input checks.

A layer is not its own tape. Its one training call,

    y, backprop = layer.begin_update(x, training=True)
    dx = backprop(dy)            # dL/dx, given dL/dy

returns the output together with ``backprop``, a closure over exactly what the backward pass of *this call*
needs (the input, an activation, a mask; the weights as they were). Nothing from the call is kept on the
layer, so a layer may be applied several times before any backward pass (tied weights, a Siamese pair, a
layer reused at several depths), and each call's ``backprop`` is independent of the others. Calling
``backprop`` adds the gradient of the loss with respect to each parameter to that parameter's ``grad``
(``backprop.parameters.accumulate``): gradients accumulate, over uses of a layer and over calls, until
``zero_grad()`` clears them — which is also what lets several micro-batches add up to one optimizer step.
(In the spirit of Thinc's ``begin_update`` → ``(Y, backprop)``; ``Sequential`` chains the closures in reverse.)

``backprop`` may be called once per ``begin_update`` (a second call would count that call's gradients twice).
Layers whose class sets ``can_skip_input_grad`` accept ``backprop(dy, input_grad=False)``, which adds the
parameter gradients and skips dL/dx, returning None: what the first layer of a network does in training (for
``Dense`` a third of its backward work).

``layer(x)`` / ``forward(x, training=False)`` is the plain inference call: the output only, nothing kept.

Writing a layer: subclass ``Layer``, create parameters as ``self.params[name] = Parameter(array)``, and
implement ``begin_update`` (``forward`` follows from it; override it only for a cheaper inference path).
Inside ``backprop``, hand each parameter gradient to ``accumulate(self.backend, param, grad)`` as a fresh
array of your own (it becomes the parameter's gradient, into which later calls may add in place). What a
layer keeps on itself is state of the *model* (parameters, buffers such as BatchNorm's running statistics, a
random stream) or diagnostics of its last call (iteration counts, ``grad_norms_through_time``), never what a
backward pass needs. ``bp.gradcheck(layer, x)`` checks the result against finite differences.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from backends import Backend, describe_array, dtype_name, get_backend
from backends.array_types import Array
from backends.random import Seed

from ..errors import DeviceMismatchError, DTypeError, ShapeError
from ..on_device import on_device, on_device_update
from ..parameters import Parameter, zero_grad

#: The closure ``begin_update`` returns: ``backprop(dL/dy) -> dL/dx`` (see the module docstring).
Backprop = Callable[..., Any]

_L = TypeVar("_L", bound="Layer")  # a method returning a copy of the layer it is called on, of its own class


class Layer:
    """Base class of every layer. ``params`` maps names to ``Parameter`` boxes, ``buffers`` names to arrays."""

    #: What was saved with the model in its file (``backprop.load_model`` sets it); empty for a model built here.
    metadata: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, *, backend: Backend | str | None = None, dtype: Any = None):
        self.backend = get_backend(backend)
        self.dtype = self.backend.dtype(dtype) if dtype is not None else self.backend.float_dtype
        self.params: dict[str, Parameter] = {}  # this layer's own parameters (its inner layers' are theirs)
        self.buffers: dict[str, object] = {}  # state that is saved but not trained

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Every layer's forward pass and the backward closure it returns, your own layers' too, run with the
        # layer's device current, so the arrays they create land on it whoever calls them (backprop/on_device.py).
        if "forward" in cls.__dict__:
            cls.forward = on_device(cls.__dict__["forward"])  # type: ignore[method-assign]  # wrapped, same signature
        if "begin_update" in cls.__dict__:
            cls.begin_update = on_device_update(  # type: ignore[method-assign]  # wrapped, same signature
                cls.__dict__["begin_update"])

    @property
    def xp(self) -> Any:
        return self.backend.xp

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        """``(y, backprop)``: the output for ``x`` and the closure ``backprop(dy) -> dx`` of this call (see the
        module docstring). ``training`` selects training behaviour (dropout masks, batch statistics)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement begin_update")

    def forward(self, x: Array, *, training: bool = False) -> Array:
        """The output for ``x``; nothing is kept for a backward pass."""
        return self.begin_update(x, training=training)[0]

    #: True when this layer's ``backprop`` accepts ``input_grad=False`` and then skips computing dL/dinput (the
    #: first layer of a network needs only its parameter gradients; for a Dense layer that saves a third of its
    #: backward work).
    can_skip_input_grad = False

    def __call__(self, x: Array, *, training: bool = False) -> Array:
        return self.forward(x, training=training)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""

    # -- parameters ---------------------------------------------------------
    def named_children(self) -> dict[str, Layer]:
        """The layers inside this one by name (``Sequential``: ``"0"``, ``"1"``, ...); a composite layer of your own
        overrides this so its inner layers' parameters are found (named ``"<child>.<name>"``)."""
        return {}

    def _named_layers(self, prefix: str = ""):
        """(name prefix, layer) for this layer and every layer inside it, depth first."""
        yield prefix, self
        for name, child in self.named_children().items():
            yield from child._named_layers(f"{prefix}{name}.")

    def named_parameters(self) -> dict[str, Parameter]:
        """Every trainable parameter (a ``Parameter`` box: ``.value``, ``.grad``) by its full name (``"0.weight"``
        inside a ``Sequential``). A box that several layers hold (tied weights) is listed once, under its first
        name."""
        named, seen = {}, set()
        for prefix, layer in self._named_layers():
            for key, param in layer.params.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    named[prefix + key] = param
        return named

    def parameters(self) -> list[Parameter]:
        """Every parameter box once, in the order of ``named_parameters``: what an optimizer is handed."""
        return list(self.named_parameters().values())

    def named_gradients(self) -> dict[str, object]:
        """The accumulated gradient of every parameter that has one, by name."""
        return {name: p.grad for name, p in self.named_parameters().items() if p.grad is not None}

    def _buffer_slots(self) -> dict[str, tuple[Layer, str]]:
        """Every buffer's full name -> (layer, key): where it is stored (``layer.buffers[key]``); a layer used at
        several places counts once."""
        slots, seen = {}, set()
        for prefix, layer in self._named_layers():
            for key in layer.buffers:
                if (id(layer), key) not in seen:
                    seen.add((id(layer), key))
                    slots[prefix + key] = (layer, key)
        return slots

    def named_buffers(self) -> dict[str, object]:
        return {name: layer.buffers[key] for name, (layer, key) in self._buffer_slots().items()}

    def named_arrays(self) -> dict[str, object]:
        """Every parameter's value and every buffer, keyed ``"param/<name>"`` and ``"buffer/<name>"`` (the keys of
        model files and of ``replace_arrays``)."""
        arrays = {f"param/{name}": p.value for name, p in self.named_parameters().items()}
        arrays.update({f"buffer/{name}": array for name, array in self.named_buffers().items()})
        return arrays

    def replace_arrays(self, arrays: dict[str, object]) -> None:
        """Store new arrays as parameter values and buffers, keyed as ``named_arrays``; names not given keep their
        arrays. Each must have the shape and dtype of the array it replaces; all are checked before any is stored.

        The arrays are stored, not copied into the current ones (arrays may be immutable: JAX), so the caller
        must not change them afterwards. The parameter boxes stay the same (an optimizer holding them sees the
        new values).
        """
        writes: list[tuple[Parameter | Layer, str | None, object]] = []
        for name, param in self.named_parameters().items():
            new = arrays.get(f"param/{name}")
            if new is not None:
                self._check_replacement("param", name, param.value, new)
                writes.append((param, None, new))
        for name, (layer, key) in self._buffer_slots().items():
            new = arrays.get(f"buffer/{name}")
            if new is not None:
                self._check_replacement("buffer", name, layer.buffers[key], new)
                writes.append((layer, key, new))
        for owner, slot, new in writes:
            if isinstance(owner, Parameter):
                owner.value = new
            elif slot is not None:
                owner.buffers[slot] = new

    def _check_replacement(self, kind: str, name: str, current, new) -> None:
        if tuple(new.shape) != tuple(current.shape) or new.dtype != current.dtype:
            raise ShapeError(f"{self!r}: {kind} {name!r} is {dtype_name(current.dtype)} of shape "
                             f"{tuple(current.shape)}; got {dtype_name(new.dtype)} of shape {tuple(new.shape)}")

    def num_parameters(self) -> int:
        total = 0
        for param in self.named_parameters().values():
            count = 1
            for n in param.shape:
                count *= n
            total += count
        return total

    def zero_grad(self) -> None:
        """Forget every parameter's accumulated gradient (set it to None)."""
        zero_grad(self.parameters())

    def reseed(self, seed: Seed) -> None:
        """Restart the layer's random stream (layers that draw random numbers override this)."""

    def config(self) -> dict:
        """The constructor arguments (JSON values) that rebuild this layer's architecture."""
        return {}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple] | None:
        """The shapes of the arrays ``cls(**config)`` would create, keyed ``param/<name>`` and ``buffer/<name>``,
        computed without creating them: a model file's declared architecture is checked against the arrays the
        file actually holds before anything is allocated. None: this layer type cannot tell (then it is built
        as declared). A layer with parameters overrides this; one without returns ``{}``."""
        return None

    # -- moving and converting ------------------------------------------------
    def _map_arrays(self: _L, convert, *, backend: Backend | None = None, dtype=None, memo: dict | None = None) -> _L:
        """A copy whose parameters and buffers are ``convert(array)``, without gradients. ``memo``
        (id -> copy) makes a layer or parameter met twice (tied weights) one copy, held twice, as it was."""
        memo = {} if memo is None else memo
        if id(self) in memo:
            return memo[id(self)]
        clone = memo[id(self)] = copy.copy(self)
        clone.backend = backend or self.backend
        clone.dtype = dtype if dtype is not None else clone.backend.dtype(dtype_name(self.dtype))
        clone.params = {}
        for key, param in self.params.items():
            if id(param) not in memo:
                memo[id(param)] = Parameter(convert(param.value))
            clone.params[key] = memo[id(param)]
        clone.buffers = {k: convert(v) for k, v in self.buffers.items()}
        return clone

    def to(self, backend: Backend | str) -> Layer:
        """A copy of this layer with its arrays on another backend (through the host)."""
        target = get_backend(backend)
        return self._map_arrays(lambda a: target.from_host(self.backend.to_host(a)), backend=target)

    @on_device
    def astype(self, dtype: Any) -> Layer:
        """A copy with floating parameters converted to ``dtype`` (``"float64"`` for gradient checks)."""
        dtype = self.backend.dtype(dtype)
        xp = self.xp

        def convert(a):
            return xp.astype(a, dtype) if xp.isdtype(a.dtype, "real floating") else a

        return self._map_arrays(convert, dtype=dtype)

    # -- input checks -------------------------------------------------------
    def check_input(self, x: Array, *, ndim: int | None = None, min_ndim: int | None = None,
                    last_dim: int | None = None, expected: str = "") -> None:
        """Raise a one-line error naming this layer when ``x`` is not what it expects.

        ``expected`` describes the shape in words, such as ``"(batch, 64)"``.
        """
        if not self.backend.owns(x):
            raise DeviceMismatchError(
                f"{self!r}: input is {describe_array(x)}, but the layer lives on backend "
                f"{self.backend.name} (device {self.backend.device}); create the input with "
                f"backend.asarray(...) or move the model with .to(...)")
        if x.dtype != self.dtype:
            raise DTypeError(f"{self!r}: expected {dtype_name(self.dtype)} input, got {dtype_name(x.dtype)}")
        if ((ndim is not None and x.ndim != ndim) or (min_ndim is not None and x.ndim < min_ndim)
                or (last_dim is not None and x.shape[-1] != last_dim)):
            raise ShapeError(f"{self!r}: expected input of shape {expected}, got {tuple(x.shape)}")
