"""``Dropout``: randomly silence units during training, against overfitting."""

from __future__ import annotations

from typing import Any

from backends import Backend
from backends.array_types import Array
from backends.random import Seed

from .. import validators as check
from .base import Backprop, Layer


class Dropout(Layer):
    """Inverted dropout: in training, each unit is kept with probability 1 − p and scaled by 1/(1 − p),
    so evaluation needs no rescaling and is the identity.

    Forward (training): y = x ⊙ m / (1 − p),  m ~ Bernoulli(1 − p);   backward: dx = dy ⊙ m / (1 − p).

    Masks come from a generator on the device. ``reseed(seed)`` starts a new
    stream; the training loop reseeds every epoch from (seed, epoch), so a run
    resumed at an epoch boundary draws the same masks as an uninterrupted one.
    """

    def __init__(self, p: float = 0.5, *, seed: Seed = 0, backend: Backend | str | None = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        self.p = check.number(p, "p", low=0, high=1, high_open=True, owner="Dropout",
                              expected="a probability in [0, 1)")
        self.reseed(seed)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def config(self) -> dict:
        return {"p": self.p}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        return {}  # no parameters or buffers

    def reseed(self, seed: Seed) -> None:
        self._random = self.backend.random(seed)

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        self.check_input(x)
        if not training or self.p == 0.0:  # evaluation: the identity
            return x, _identity
        keep = 1.0 - self.p
        scaled_mask = self._random.bernoulli(tuple(x.shape), keep, dtype=x.dtype) * (1.0 / keep)

        def backprop(grad_output):
            return grad_output * scaled_mask

        return x * scaled_mask, backprop

    def _map_arrays(self, convert, **options):
        clone = super()._map_arrays(convert, **options)
        clone.reseed(self._random.seed)
        return clone


def _identity(grad_output):
    return grad_output
