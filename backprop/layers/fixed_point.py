"""``FixedPointRecurrent``: recurrent backpropagation (Almeida 1987, Pineda 1987).

The layer's output is the fixed point of a recurrent map, found by iteration;
its gradient comes from a second fixed-point iteration (the adjoint), so the
iterates are never stored and memory does not grow with the number of steps.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from types import FrameType
from typing import Any

from backends import Backend, HostRandom
from backends.array_types import Array

from .. import validators as check
from ..errors import ConfigError, ShapeError
from ..init import INITIALIZERS, host_random, initialize
from ..on_device import on_device
from ..parameters import Parameter, accumulate
from .base import Backprop, Layer

#: activation -> its Lipschitz constant (the largest |f'|), for the contraction bound.
_LIPSCHITZ = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0}


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stacklevel_outside_package() -> int:
    """The ``stacklevel`` that makes a warning raised by our caller point at the first frame outside backprop/."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _host_spectral_norm(w, rng, iterations: int = 200) -> float:
    """||w||₂ of a host (NumPy) matrix by power iteration on wᵀw, with array operators only.

    Power iteration approaches the largest singular value from below; 200
    steps on a (hidden, hidden) matrix take well under a millisecond and agree
    with an SVD to about 1e-3 or better for random matrices.
    """
    v = rng.normal((w.shape[1],))
    norm = 0.0
    for _ in range(iterations):
        u = w @ v
        v = w.T @ u
        length = float((v * v).sum()) ** 0.5
        if length == 0.0:
            return 0.0
        v = v / length
        norm = float(((w @ v) ** 2).sum()) ** 0.5
    return norm


class FixedPointRecurrent(Layer):
    """The recurrent backpropagation network of Almeida (1987) and Pineda (1987).

    Parameters: ``weight_hh`` W (hidden, hidden), ``weight_ih`` U (input_size, hidden) and ``bias`` b
    (hidden,). Row vectors, as in ``Dense``: an input x is (batch, input_size), a state h is (batch, hidden).

    Forward: starting from h₀ = 0, iterate

        aₖ = hₖ₋₁ W + x U + b,    hₖ = (1 − α) hₖ₋₁ + α f(aₖ)        (α = ``damping``, 1 by default)

    until max |hₖ − hₖ₋₁| < ``tolerance`` (over the whole batch), or ``max_iterations``. The output is the fixed
    point h* = f(a*), a* = h* W + x U + b. Damping (α < 1) does not move the fixed point; it can turn an
    oscillating iteration into a converging one.

    Backward (implicit function theorem). Write the forward map as h = F(h, θ) = f(h W + x U + b) and its
    Jacobian J = ∂F/∂h = diag(f'(a*)) Wᵀ (column-vector convention, one example). Differentiating h* = F(h*, θ):

        dh* = J dh* + (∂F/∂θ) dθ    ⇒    dh* = (I − J)⁻¹ (∂F/∂θ) dθ,

    so with g = dL/dh*, dL = gᵀ (I − J)⁻¹ (∂F/∂θ) dθ = vᵀ (∂F/∂θ) dθ, where the adjoint v = (I − J)⁻ᵀ g solves
    the linear fixed-point equation

        v = Jᵀ v + g,   i.e. (row vectors)   v ← (f'(a*) ⊙ v) Wᵀ + g.

    With damping the step is v ← (1 − α) v + α((f'(a*) ⊙ v) Wᵀ + g): the same fixed point (the gradient does
    not depend on α, just as h* does not).

    It is iterated from v = g; v = Σₖ (Jᵀ)ᵏ g is the Neumann series, which is exactly what backpropagation
    through time over infinitely many iterations at the fixed point sums. With δ = f'(a*) ⊙ v (the error
    at the pre-activation), ∂F/∂θ gives

        dL/dW = h*ᵀ δ,   dL/dU = xᵀ δ,   dL/db = Σ_batch δ,   dL/dx = δ Uᵀ.

    Only x, h* and f'(a*) (which carries everything the backward needs from a*) are kept from the forward
    pass, by the ``backprop`` closure ``begin_update`` returns (with the weights the call used): memory is
    three arrays whatever the number of iterations, plus one (hidden, 1) vector on the layer with
    ``max_recurrent_norm``.

    The adjoint iteration stops when max |vₖ − vₖ₋₁| < ``backward_tolerance`` × max |g| (relative to the
    incoming gradient, so the scale of the loss does not change the number of iterations; the forward
    tolerance is absolute, h* being bounded by tanh/sigmoid). Both iterations converge when the map is a
    contraction: the spectral radius of J below 1, guaranteed when Lip(f) · ||W||₂ < 1 (Lip = 1 for tanh and
    relu, 1/4 for sigmoid; see ``contraction_bound()``).

    Initialization: U and W are drawn with ``init``, then W is rescaled (on the host, by power iteration) so
    that ||W||₂ = ``recurrent_norm`` (0.5 by default): with tanh the map starts as a contraction with factor
    ≤ 0.5 for any input, and the iteration converges in about log(tolerance)/log(0.5) ≈ 17 steps. Training
    does not keep it a contraction by itself (the weights often grow until the iteration slows down or fails;
    non-convergence is reported, not hidden). ``max_recurrent_norm`` (off by default) keeps it one: at each
    training forward pass, before iterating, W is rescaled in place to ||W||₂ = ``max_recurrent_norm`` if it
    is larger (a projection after the optimizer's last step, like ``torch.nn.Embedding(max_norm=...)``; the
    norm comes from a power iteration warm-started from the previous call, ten matrix-vector products per
    call, no host synchronization). With tanh and a value below 1, every forward iteration then converges.

    Convergence is checked on the host every ``check_every`` iterations (one device synchronization per
    check; the iterations in between queue on the device without waiting), and always at ``max_iterations``,
    so the iteration counts are multiples of ``check_every`` unless the limit is reached. When an iteration
    stops at ``max_iterations`` without converging (or its change is no longer finite), the layer records it
    in ``last_forward_converged`` / ``last_backward_converged`` and warns once per layer and direction with a
    ``RuntimeWarning``; the result of the last iterate is used.

    Diagnostics after each pass: ``last_forward_iterations``, ``last_forward_converged``,
    ``last_forward_change`` (the last measured max |Δh|), ``last_forward_rate`` (the observed contraction
    factor per iteration, from two successive checks; None with fewer than two checks) and the same with
    ``last_backward_``. ``stats`` sums calls, iterations and failures over passes (``reset_stats()``).
    """

    def __init__(self, input_size: int, hidden_size: int, *, activation: str = "tanh", tolerance: float = 1e-5,
                 max_iterations: int = 200, backward_tolerance: float | None = None, damping: float = 1.0,
                 check_every: int = 5, recurrent_norm: float = 0.5, max_recurrent_norm: float | None = None,
                 init: str = "glorot_uniform", rng: HostRandom | int | None = None,
                 backend: Backend | str | None = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        name = type(self).__name__
        self.input_size = input_size = check.positive_int(input_size, "input_size", owner=name)
        self.hidden_size = hidden_size = check.positive_int(hidden_size, "hidden_size", owner=name)
        if not isinstance(activation, str) or activation.lower() not in _LIPSCHITZ:
            raise ConfigError(f"{name}: activation must be one of {', '.join(_LIPSCHITZ)}, got {activation!r}")
        self.activation = activation.lower()
        self.tolerance = check.positive_number(tolerance, "tolerance", owner=name)
        self.backward_tolerance = None if backward_tolerance is None else check.positive_number(
            backward_tolerance, "backward_tolerance", owner=name, expected="a positive finite number or None")
        self.max_iterations = check.positive_int(max_iterations, "max_iterations", owner=name)
        self.check_every = check.positive_int(check_every, "check_every", owner=name)
        self.damping = check.number(damping, "damping", low=0, high=1, low_open=True, owner=name)
        self.recurrent_norm = check.number(recurrent_norm, "recurrent_norm", low=0, owner=name)
        self.max_recurrent_norm = None if max_recurrent_norm is None else check.positive_number(
            max_recurrent_norm, "max_recurrent_norm", owner=name, expected="a positive finite number or None")
        if init not in INITIALIZERS:
            raise ConfigError(f"{name}: unknown init {init!r}; expected one of {', '.join(INITIALIZERS)}")
        self.init = init

        rng = host_random(rng)
        self.params["weight_ih"] = Parameter(initialize(init, (input_size, hidden_size), rng=rng,
                                                        backend=self.backend, dtype=self.dtype))
        recurrent = INITIALIZERS[init](rng, (hidden_size, hidden_size))  # a host array
        norm = _host_spectral_norm(recurrent, rng)
        recurrent = recurrent * (self.recurrent_norm / norm) if norm > 0 else recurrent * 0.0
        self.params["weight_hh"] = Parameter(self.backend.from_host(recurrent, dtype=self.dtype))
        self.params["bias"] = Parameter(initialize("zeros", (hidden_size,), rng=rng, backend=self.backend,
                                                   dtype=self.dtype))

        self._power_vector = None  # warm start of the power iteration behind max_recurrent_norm
        self._warned = {"forward": False, "backward": False}
        self.last_forward_iterations = self.last_backward_iterations = 0
        self.last_forward_converged = self.last_backward_converged = None
        self.last_forward_change = self.last_backward_change = None
        self.last_forward_rate = self.last_backward_rate = None
        self.reset_stats()

    # -- description ----------------------------------------------------------
    @property
    def in_features(self) -> int:
        """``input_size`` (the name ``Dense`` uses, which the training loop looks for)."""
        return self.input_size

    @property
    def out_features(self) -> int:
        return self.hidden_size

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, activation={self.activation!r}"

    def config(self) -> dict:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, "activation": self.activation,
                "tolerance": self.tolerance, "max_iterations": self.max_iterations,
                "backward_tolerance": self.backward_tolerance, "damping": self.damping,
                "check_every": self.check_every, "recurrent_norm": self.recurrent_norm,
                "max_recurrent_norm": self.max_recurrent_norm, "init": self.init}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        inputs, hidden = config.get("input_size"), config.get("hidden_size")
        return {"param/weight_ih": (inputs, hidden), "param/weight_hh": (hidden, hidden), "param/bias": (hidden,)}

    def reset_stats(self) -> None:
        """Zero the running totals in ``stats``."""
        self.stats = {"forward_calls": 0, "forward_iterations": 0, "forward_failures": 0,
                      "backward_calls": 0, "backward_iterations": 0, "backward_failures": 0}

    @on_device
    def spectral_norm(self, iterations: int = 100) -> float:
        """||W||₂ of the current recurrent weight, by power iteration on the device (one host transfer)."""
        xp, w = self.xp, self.params["weight_hh"].value
        v = xp.ones((self.hidden_size, 1), dtype=self.dtype, device=self.backend.device)
        v = v / math.sqrt(self.hidden_size)
        for _ in range(iterations):
            v = xp.matrix_transpose(w) @ (w @ v)
            v = v / (xp.sqrt(xp.sum(v * v)) + xp.finfo(self.dtype).smallest_normal)
        return float(self.backend.to_host(xp.sqrt(xp.sum((w @ v) ** 2))))

    def contraction_bound(self) -> float:
        """Lip(f) · ||W||₂: below 1, the forward map is a contraction for every input (Banach), so both the
        forward and the adjoint iteration converge, at least this fast per iteration (before damping)."""
        return _LIPSCHITZ[self.activation] * self.spectral_norm()

    # -- activation and its slope ----------------------------------------------
    def _value(self, a):
        """f(a)."""
        xp = self.xp
        if self.activation == "tanh":
            return xp.tanh(a)
        if self.activation == "sigmoid":
            e = xp.exp(-xp.abs(a))  # never overflows
            return xp.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return xp.where(a > 0, a, 0.0)

    def _slope(self, a):
        """f'(a): 1 − tanh²(a), σ(a)(1 − σ(a)), or 1 where a > 0 for relu."""
        if self.activation == "relu":
            return self.xp.astype(a > 0, self.dtype)
        y = self._value(a)
        return 1.0 - y * y if self.activation == "tanh" else y * (1.0 - y)

    # -- the fixed-point solver --------------------------------------------------
    def _iterate(self, step, start, scale, tolerance: float):
        """Iterate ``state ← step(state)`` from ``start``; returns (state, iterations, converged, change, rate).

        ``change`` is max|Δ| / ``scale`` at the last check (``scale`` a 0-d device array or 1.0).
        """
        xp = self.xp
        state, previous_check = start, None
        rate = None
        change = math.inf
        for k in range(1, self.max_iterations + 1):
            new = step(state)
            if k % self.check_every == 0 or k == self.max_iterations:
                change = float(self.backend.to_host(xp.max(xp.abs(new - state)) / scale))
                if previous_check is not None and math.isfinite(change) and previous_check[1] > 0 and change > 0:
                    rate = (change / previous_check[1]) ** (1.0 / (k - previous_check[0]))
                previous_check = (k, change)
                state = new
                if change < tolerance:
                    return state, k, True, change, rate
                if not math.isfinite(change):
                    return state, k, False, change, rate
            else:
                state = new
        return state, self.max_iterations, False, change, rate

    def _report(self, direction: str, iterations: int, converged: bool, change: float, rate, tolerance: float):
        setattr(self, f"last_{direction}_iterations", iterations)
        setattr(self, f"last_{direction}_converged", converged)
        setattr(self, f"last_{direction}_change", change)
        setattr(self, f"last_{direction}_rate", rate)
        self.stats[f"{direction}_calls"] += 1
        self.stats[f"{direction}_iterations"] += iterations
        if converged:
            return
        self.stats[f"{direction}_failures"] += 1
        if not self._warned[direction]:
            self._warned[direction] = True
            what = "relative change" if direction == "backward" else "change"
            warnings.warn(
                f"{self!r}: the {direction} fixed-point iteration did not converge: after {iterations} iterations "
                f"the max {what} is {change:.3g} (tolerance {tolerance:g}); the map may not be a contraction "
                f"(contraction_bound() = Lip(f)·||W||₂ > 1?); try max_recurrent_norm < 1, damping < 1 or more "
                f"max_iterations (warned once per layer and direction)", RuntimeWarning,
                stacklevel=_stacklevel_outside_package())

    @on_device
    def project_recurrent_norm(self, max_norm: float | None = None) -> None:
        """Rescale W so that ||W||₂ ≤ ``max_norm`` (default ``max_recurrent_norm``), on the device (in place
        where the backend allows).

        ||W||₂ is estimated by power iteration on WᵀW from the previous call's vector (30 steps the first time,
        then 5: W changes little between optimizer steps). The estimate approaches ||W||₂ from below.
        """
        max_norm = self.max_recurrent_norm if max_norm is None else max_norm
        if max_norm is None:
            return
        xp, w = self.xp, self.params["weight_hh"].value
        v, steps = self._power_vector, 5
        if v is None:
            v = xp.ones((self.hidden_size, 1), dtype=self.dtype, device=self.backend.device)
            v, steps = v / math.sqrt(self.hidden_size), 30
        tiny = xp.finfo(self.dtype).smallest_normal
        w_t = xp.matrix_transpose(w)
        for _ in range(steps):
            v = w_t @ (w @ v)
            v = v / (xp.sqrt(xp.sum(v * v)) + tiny)
        self._power_vector = v
        sigma = xp.sqrt(xp.sum((w @ v) ** 2))
        factor = xp.where(sigma > max_norm, max_norm / (sigma + tiny), 1.0)
        self.params["weight_hh"].value = self.backend.scale(w, factor)

    # -- forward and backward ------------------------------------------------------
    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        self.check_input(x, ndim=2, last_dim=self.input_size, expected=f"(batch, {self.input_size})")
        if training and self.max_recurrent_norm is not None:
            self.project_recurrent_norm()
        xp, alpha, backend = self.xp, self.damping, self.backend
        weight_hh, weight_ih, bias = self.params["weight_hh"], self.params["weight_ih"], self.params["bias"]
        w, u = weight_hh.value, weight_ih.value
        drive = x @ u + bias.value  # x U + b, the same at every step

        def step(h):
            y = self._value(h @ w + drive)
            return y if alpha == 1.0 else (1.0 - alpha) * h + alpha * y

        start = xp.zeros((x.shape[0], self.hidden_size), dtype=self.dtype, device=backend.device)
        h, iterations, converged, change, rate = self._iterate(step, start, 1.0, self.tolerance)
        self._report("forward", iterations, converged, change, rate, self.tolerance)
        fprime = self._slope(h @ w + drive)  # f'(a*) at the fixed point a* = h* W + x U + b

        def backprop(grad_output):
            if tuple(grad_output.shape) != tuple(h.shape):
                raise ShapeError(f"{self!r}: expected grad_output of shape {tuple(h.shape)}, "
                                 f"got {tuple(grad_output.shape)}")
            w_t = xp.matrix_transpose(w)
            g = grad_output

            def adjoint_step(v):
                new = (fprime * v) @ w_t + g
                return new if alpha == 1.0 else (1.0 - alpha) * v + alpha * new

            tolerance = self.backward_tolerance if self.backward_tolerance is not None else self.tolerance
            scale = xp.max(xp.abs(g)) + xp.finfo(self.dtype).smallest_normal  # a zero gradient converges at once
            v, iterations, converged, change, rate = self._iterate(adjoint_step, g, scale, tolerance)
            self._report("backward", iterations, converged, change, rate, tolerance)
            delta = fprime * v  # dL/da*
            accumulate(backend, weight_hh, xp.matrix_transpose(h) @ delta)
            accumulate(backend, weight_ih, xp.matrix_transpose(x) @ delta)
            accumulate(backend, bias, xp.sum(delta, axis=0))
            return delta @ xp.matrix_transpose(u)

        return h, backprop

    def _map_arrays(self, convert, **options):
        clone = super()._map_arrays(convert, **options)
        clone._warned = {"forward": False, "backward": False}  # a copy has its own warnings and totals
        clone._power_vector = None
        clone.reset_stats()
        return clone


__all__ = ["FixedPointRecurrent"]
