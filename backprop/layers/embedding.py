"""``Embedding``: a learned vector for each of ``num_embeddings`` tokens (a lookup table)."""

from __future__ import annotations

from typing import Any

from backends import Backend, HostRandom, describe_array, dtype_name
from backends.array_types import Array

from .. import validators as check
from ..errors import ConfigError, DeviceMismatchError, DTypeError, ShapeError
from ..init import INITIALIZERS, host_random, initialize
from ..parameters import Parameter, accumulate
from .base import Backprop, Layer


class Embedding(Layer):
    """Lookup table: integer indices ``(batch, ...)`` to vectors ``(batch, ..., embedding_dim)``.

    ``weight`` has shape ``(num_embeddings, embedding_dim)``; row i is the vector of index i.
    ``init="normal"`` draws it from N(0, 1) as ``torch.nn.Embedding`` does; any name from
    ``backprop.init`` works too.

    Forward:  y[..., :] = W[idx[...], :]   (``take`` on the flattened indices)
    Backward: dL/dW[i] += Σ_{positions p with idx[p] = i} dL/dy[p]   (scatter-add: an index that appears
              several times accumulates all its gradients; rows never looked up get zero)
    The input is a set of integers, not a differentiable quantity, so the backward pass returns ``None``:
    an Embedding must be the first layer of a model.

    Index checks: indices must be an integer array of this layer's backend and device. With
    ``check_indices=True`` (the default) every forward pass also checks that all indices lie in
    ``0 .. num_embeddings − 1`` and raises a one-line ``ShapeError`` otherwise; that check copies the
    minimum and maximum (two numbers, one transfer) to the host, which waits for the device. Set
    ``check_indices=False`` to skip it in a hot loop on a GPU; out-of-range indices then give whatever
    the array library does (an IndexError on NumPy, a RuntimeError or a device-side assert in PyTorch).
    Negative indices are out of range (they do not count from the end).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, init: str = "normal",
                 rng: HostRandom | int | None = None, check_indices: bool = True,
                 backend: Backend | str | None = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        num_embeddings = check.positive_int(num_embeddings, "num_embeddings", owner="Embedding")
        embedding_dim = check.positive_int(embedding_dim, "embedding_dim", owner="Embedding")
        if not isinstance(init, str) or (init != "normal" and init not in INITIALIZERS):
            raise ConfigError(f"Embedding: unknown initializer {init!r}; expected 'normal' or one of "
                              f"{', '.join(INITIALIZERS)}")
        check_indices = check.flag(check_indices, "check_indices", owner="Embedding")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.init = init
        self.check_indices = check_indices
        rng = host_random(rng)
        shape = (num_embeddings, embedding_dim)
        if init == "normal":
            weight = self.backend.from_host(rng.normal(shape, 0.0, 1.0), dtype=self.dtype)
        else:
            weight = initialize(init, shape, rng=rng, backend=self.backend, dtype=self.dtype)
        self.params["weight"] = Parameter(weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"

    def config(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "init": self.init,
                "check_indices": self.check_indices}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        return {"param/weight": (config.get("num_embeddings"), config.get("embedding_dim"))}

    def _check_indices(self, x):
        if not self.backend.owns(x):
            raise DeviceMismatchError(
                f"{self!r}: input is {describe_array(x)}, but the layer lives on backend "
                f"{self.backend.name} (device {self.backend.device}); create the input with "
                f"backend.asarray(...) or move the model with .to(...)")
        xp = self.xp
        if not xp.isdtype(x.dtype, "integral"):
            raise DTypeError(f"{self!r}: expected integer indices of shape (batch, ...), got {dtype_name(x.dtype)} "
                             f"values; convert them with astype(int64)")
        if x.ndim < 1:
            raise ShapeError(f"{self!r}: expected indices of shape (batch, ...), got a 0-d array")
        flat = xp.reshape(x, (-1,))
        if x.dtype != xp.int64 and x.dtype != xp.int32:  # PyTorch gathers and scatters only with these
            flat = xp.astype(flat, xp.int64)
        if self.check_indices and flat.shape[0] > 0:
            low, high = (int(v) for v in self.backend.to_host(xp.stack([xp.min(flat), xp.max(flat)])))
            if low < 0 or high >= self.num_embeddings:
                bad = low if low < 0 else high
                raise ShapeError(f"{self!r}: index {bad} is out of range; indices must lie in "
                                 f"0..{self.num_embeddings - 1} (found values from {low} to {high})")
        return flat

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        flat = self._check_indices(x)
        weight, xp, backend, dim = self.params["weight"], self.xp, self.backend, self.embedding_dim
        table = weight.value
        rows = xp.take(table, flat, axis=0)

        def backprop(grad_output):
            """Add dL/dW (scatter-added by index) and return ``None``: integer indices have no gradient."""
            grad = xp.reshape(grad_output, (-1, dim))
            if grad.dtype != table.dtype:
                grad = xp.astype(grad, table.dtype)
            weight_grad = xp.zeros(tuple(table.shape), dtype=table.dtype, device=backend.device)
            accumulate(backend, weight, backend.scatter_add(weight_grad, flat, grad))
            return None

        return xp.reshape(rows, (*x.shape, dim)), backprop
