"""Recurrent layers: ``RNN`` (Elman, tanh), ``LSTM`` and ``GRU``, trained by backpropagation through time.

Input ``(batch, time, features)`` (batch first); the state starts at zero. The output is the hidden state at
every step, ``(batch, time, hidden)``, or with ``return_sequences=False`` the final state ``(batch, hidden)``.
``bidirectional=True`` adds a second set of weights (names ending in ``_reverse``) that reads the sequence
from its last step to its first; the two directions' states are concatenated, ``hidden * 2`` features, the
forward direction first. The final state of a bidirectional layer is ``[h_fwd(T−1), h_bwd(0)]``: each
direction's state after it has read the whole sequence (PyTorch's ``h_n``).

Weights are laid out like ``Dense`` (``x @ W``), so they are the *transposes* of PyTorch's:
``weight_ih`` is ``(input_size, gates * hidden)``, ``weight_hh`` is ``(hidden, gates * hidden)``, with the
gate blocks side by side along the columns in PyTorch's order. One bias per gate replaces PyTorch's two
redundant ones (``b_ih + b_hh``), except the GRU's ``b_hn``, which sits inside the reset gate's product and
so is kept apart as ``bias_hn``. From a ``torch.nn.LSTM`` ``m``::

    weight_ih = m.weight_ih_l0.T    weight_hh = m.weight_hh_l0.T    bias = m.bias_ih_l0 + m.bias_hh_l0

Backward is backpropagation through time: the per-step caches of the forward pass are walked from the last
step to the first, the chain rule applied at each step, and the gradient of the state carried to the step
before. The input-to-hidden products of all steps are computed in one matrix product before the loop, and
their gradients (``weight_ih``, ``weight_hh``, ``bias``, the input) in one product each after it; only the
hidden-to-hidden product and the gate arithmetic are done step by step. For LSTM and GRU that step is the
backend's fused cell (``Backend.lstm_cell_forward``/``lstm_cell_backward``, ``gru_cell_*``; portable defaults
in ``backends/base.py``). Inside the layer everything per step is laid out time-major, (time, batch, ·), so
a step's pre-activations and gate gradients are contiguous blocks that the cells update in place (NumPy,
PyTorch, CuPy) and the products after the loop read without copies.

Truncated BPTT, ``bptt_steps=k``: the forward pass is unchanged (the state carries across the whole
sequence), but the steps are cut, in the order the direction reads them, into chunks of k steps (the last
may be shorter: steps 0..k−1, k..2k−1, ...), and the gradient flowing back through the recurrent state
(h, and the LSTM's cell c) is set to zero where one chunk begins. This is exactly the gradient of a network
whose state is detached at the start of every chunk (``h = h.detach()`` in PyTorch). A step's output
gradient therefore reaches back only to the first step of its own chunk (between 1 and k steps).
"""

from __future__ import annotations

import math
from typing import Any

from backends import Backend, HostRandom
from backends.array_types import Array

from .. import validators as check
from ..errors import ConfigError, ShapeError
from ..init import INITIALIZERS, host_random, initialize
from ..on_device import on_device
from ..parameters import Parameter, accumulate
from .base import Backprop, Layer


class Recurrent(Layer):
    """What ``RNN``, ``LSTM`` and ``GRU`` share: options, parameters, the loop over time and its reverse.

    ``Cell(input_size, hidden_size, *, return_sequences=True, bidirectional=False, bptt_steps=None,
    init="uniform", rng=None, backend=None, dtype=None)``:

    * ``return_sequences``: output every step's state ``(batch, time, hidden)``, or only the final one
      ``(batch, hidden)``;
    * ``bidirectional``: a second direction reading the sequence backwards (parameters ``*_reverse``);
      outputs concatenated, ``2 * hidden`` features;
    * ``bptt_steps``: truncated backpropagation through time in chunks of that many steps (module docstring);
    * ``init``: ``"uniform"`` (PyTorch's U(−1/√hidden, 1/√hidden) for every weight and bias) or a name from
      ``backprop.init`` for the weights (drawn gate block by gate block), biases then zero;
    * ``rng``: a seed or ``HostRandom`` for the initial weights.

    After a backward pass, ``grad_norms_through_time`` gives its ‖dL/dh_t‖ per step (the vanishing-gradient view).
    A subclass sets ``gate_order`` and implements one step of the cell forward (``_cell_forward``) and its
    chain rule (``_cell_backward``).
    """

    gate_order: tuple[str, ...] = ("h",)
    extra_bias: str | None = None  # a per-direction bias beside ``bias`` (the GRU's ``bias_hn``)

    def __init__(self, input_size: int, hidden_size: int, *, return_sequences: bool = True,
                 bidirectional: bool = False, bptt_steps: int | None = None, init: str = "uniform",
                 rng: HostRandom | int | None = None, backend: Backend | str | None = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        name = type(self).__name__
        input_size = check.positive_int(input_size, "input_size", owner=name)
        hidden_size = check.positive_int(hidden_size, "hidden_size", owner=name)
        return_sequences = check.flag(return_sequences, "return_sequences", owner=name)
        bidirectional = check.flag(bidirectional, "bidirectional", owner=name)
        if bptt_steps is not None:
            bptt_steps = check.positive_int(bptt_steps, "bptt_steps", owner=name,
                                            expected="a positive integer (or None for full BPTT)")
        if not isinstance(init, str) or (init != "uniform" and init not in INITIALIZERS):
            raise ConfigError(f"{name}: unknown initializer {init!r}; expected 'uniform' or one of "
                              f"{', '.join(INITIALIZERS)}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.return_sequences, self.bidirectional = return_sequences, bidirectional
        self.bptt_steps, self.init = bptt_steps, init
        self.suffixes = ("", "_reverse") if bidirectional else ("",)
        rng = host_random(rng)
        for suffix in self.suffixes:
            self._init_direction(suffix, rng)
        # dL/dh_t of the last backward pass, per direction (grad_norms_through_time)
        self._dh: list[Array] | None = None

    # -- parameters -----------------------------------------------------------
    @on_device
    def _init_direction(self, suffix: str, rng) -> None:
        """``init="uniform"``: every weight and bias from U(−1/√hidden, 1/√hidden), as PyTorch does.
        Any other name from ``backprop.init``: each gate's block of the weights drawn on its own (so the
        fans are those of one gate), biases zero."""
        gates, hidden = len(self.gate_order), self.hidden_size
        for name, shape in self._direction_shapes(self.input_size, hidden).items():
            if self.init == "uniform":
                bound = 1.0 / math.sqrt(hidden)
                value = self.backend.from_host(rng.uniform(shape, -bound, bound), dtype=self.dtype)
            elif name.startswith("weight"):
                blocks = [initialize(self.init, (shape[0], hidden), rng=rng, backend=self.backend, dtype=self.dtype)
                          for _ in range(gates)]
                value = blocks[0] if gates == 1 else self.xp.concat(blocks, axis=1)
            else:
                value = self.xp.zeros(shape, dtype=self.dtype, device=self.backend.device)
            self.params[name + suffix] = Parameter(value)

    @classmethod
    def _direction_shapes(cls, input_size: Any, hidden: Any) -> dict[str, tuple]:
        # the sizes as a declared config gives them: ints, or anything a bad file holds (declared_arrays reports it)
        gates = len(cls.gate_order)
        shapes = {"weight_ih": (input_size, gates * hidden), "weight_hh": (hidden, gates * hidden),
                  "bias": (gates * hidden,)}
        if cls.extra_bias:
            shapes[cls.extra_bias] = (hidden,)
        return shapes

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        suffixes = ("", "_reverse") if config.get("bidirectional", False) else ("",)
        shapes = cls._direction_shapes(config.get("input_size"), config.get("hidden_size"))
        return {f"param/{name}{suffix}": shape for suffix in suffixes for name, shape in shapes.items()}

    def _direction_params(self, suffix: str) -> dict:
        names = ("weight_ih", "weight_hh", "bias") + ((self.extra_bias,) if self.extra_bias else ())
        return {name: self.params[name + suffix].value for name in names}

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.return_sequences:
            text += ", return_sequences=False"
        if self.bidirectional:
            text += ", bidirectional=True"
        if self.bptt_steps is not None:
            text += f", bptt_steps={self.bptt_steps}"
        return text

    def config(self) -> dict:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "return_sequences": self.return_sequences, "bidirectional": self.bidirectional,
                "bptt_steps": self.bptt_steps, "init": self.init}

    @property
    def output_size(self) -> int:
        """Features of the output: ``hidden_size``, twice that when bidirectional."""
        return self.hidden_size * len(self.suffixes)

    # -- forward and backward -----------------------------------------------------
    can_skip_input_grad = True

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        self.check_input(x, ndim=3, last_dim=self.input_size, expected=f"(batch, time, {self.input_size})")
        if x.shape[1] == 0:
            raise ShapeError(f"{self!r}: expected input of shape (batch, time, {self.input_size}) with at least "
                             f"one time step, got {tuple(x.shape)}")
        xp = self.xp
        batch, steps = x.shape[0], x.shape[1]
        # Time-major rows (step t is rows t·batch .. (t+1)·batch − 1): every per-step array below is then one
        # contiguous block, which the cells can update in place and the backward pass can write into.
        x_rows = xp.reshape(xp.permute_dims(x, (1, 0, 2)), (steps * batch, self.input_size))
        runs, outputs = [], []
        for suffix in self.suffixes:
            params = self._direction_params(suffix)
            order = range(steps - 1, -1, -1) if suffix else range(steps)
            # Every step's input projection x_t W_ih + b in one 2-D product: (time, batch, gates * hidden).
            projected = xp.reshape(x_rows @ params["weight_ih"], (steps, batch, -1))
            projected = self.backend.add_scaled(projected, params["bias"])  # in place where allowed: our own
            hs: list = [None] * steps
            caches: list = [None] * steps
            state = None  # the zero initial state
            for t in order:
                # projected[t] is handed to the cell as its own: it may turn it into the gates, in place
                hs[t], state, caches[t] = self._cell_forward(projected[t, ...], state, params)
            runs.append((suffix, params, order, hs, caches))
            outputs.append(xp.stack(hs, axis=1) if self.return_sequences else hs[order[-1]])
        y = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=-1)

        def backprop(grad_output, input_grad: bool = True):
            return self._backward(x_rows, batch, steps, runs, grad_output, input_grad)

        return y, backprop

    @on_device
    def step(self, x_t: Array, state: Any = None) -> tuple[Array, Any]:
        """One step of a unidirectional layer for generation: ``(h, state) = layer.step(x_t, state)``.

        ``x_t`` is ``(batch, input_size)``; ``state`` is what the previous call returned (None: zeros):
        ``h`` for RNN and GRU, ``(h, c)`` for LSTM. Nothing is cached for a backward pass.
        """
        if self.bidirectional:
            raise ConfigError(f"{self!r}: step() runs one direction forward in time; a bidirectional layer "
                              f"needs the whole sequence (call the layer on it)")
        self.check_input(x_t, ndim=2, last_dim=self.input_size, expected=f"(batch, {self.input_size})")
        params = self._direction_params("")
        h, state, _ = self._cell_forward(x_t @ params["weight_ih"] + params["bias"], state, params)
        return h, state

    def _backward(self, x_rows, batch, steps, runs, grad_output, input_grad: bool):
        """Backpropagation through time for one call: ``runs`` holds each direction's parameters (as the call
        used them), step order, per-step outputs and caches."""
        xp, backend = self.xp, self.backend
        hidden, width = self.hidden_size, len(self.gate_order) * self.hidden_size
        expected = ((batch, steps, self.output_size) if self.return_sequences else (batch, self.output_size))
        if tuple(grad_output.shape) != expected:
            raise ShapeError(f"{self!r}: expected an output gradient of shape {expected}, "
                             f"got {tuple(grad_output.shape)}")
        device, dtype = backend.device, self.dtype
        zeros = xp.zeros((batch, hidden), dtype=dtype, device=device)
        two_kinds = self.extra_bias is not None  # d_hh differs from d_in (the GRU's n gate)
        grad_x, dh_steps = None, []
        for d, (suffix, params, order, hs, caches) in enumerate(runs):
            grad = grad_output[..., d * hidden:(d + 1) * hidden] if self.bidirectional else grad_output
            # dL/d(pre-activations) at each step, in time order, as weight_ih/bias and as weight_hh see them:
            # written straight into (time, batch, gates) arrays where the backend's cells can (else stacked)
            outs = None
            if backend.cells_write_out:
                outs = [xp.empty((steps, batch, width), dtype=dtype, device=device)
                        for _ in range(2 if two_kinds else 1)]
            d_in: list = [None] * steps
            d_hh: list = [None] * steps
            views: list = [None] * steps  # the parts of ``outs`` handed to each step
            # W_hhᵀ once for every step's product, where the backend has a faster layout for it than a view
            params = {**params, "weight_hh_t": backend.transposed_for_products(params["weight_hh"])}
            dh_seen: list = [zeros] * steps  # dL/dh_t, for grad_norms_through_time
            carry_h = carry_c = None  # gradient reaching this step's state from the step after it
            for pos in range(steps - 1, -1, -1):
                t = order[pos]
                if self.return_sequences:
                    dh = grad[:, t, :]
                else:
                    dh = grad if pos == steps - 1 else None
                if carry_h is not None:  # the carried gradient is the cell's own new array: add in place
                    dh = carry_h if dh is None else backend.add_scaled(carry_h, dh)
                if dh is None:  # no gradient reaches this step (cut off by truncation)
                    d_in[t] = d_hh[t] = xp.zeros((batch, width), dtype=dtype, device=device)
                    carry_h = carry_c = None
                    continue
                dh_seen[t] = dh
                pass_back = pos > 0 and not (self.bptt_steps is not None and pos % self.bptt_steps == 0)
                if outs is not None:
                    views[t] = tuple(o[t, ...] for o in outs)
                d_in[t], d_hh[t], carry_h, carry_c = self._cell_backward(dh, carry_c, caches[t], params,
                                                                          pass_back, views[t])
            d_in_all = self._gathered(outs, 0, d_in, views)  # (time, batch, gates * hidden)
            d_hh_all = self._gathered(outs, -1, d_hh, views) if two_kinds else d_in_all
            flat_in = xp.reshape(d_in_all, (steps * batch, width))
            accumulate(backend, self.params["weight_ih" + suffix], xp.matrix_transpose(x_rows) @ flat_in)
            # weight_hh meets h_{t−1} at step t: the step before in this direction's reading order (the zero
            # state at its first step, which adds nothing)
            if steps > 1:
                h_steps = xp.stack(hs, axis=0)
                if suffix:  # reading backwards: step t read h_{t+1}
                    h_prev, d_rec = h_steps[1:, ...], d_hh_all[:-1, ...]
                else:
                    h_prev, d_rec = h_steps[:-1, ...], d_hh_all[1:, ...]
                rows = (steps - 1) * batch
                grad_hh = (xp.matrix_transpose(xp.reshape(h_prev, (rows, hidden)))
                           @ xp.reshape(d_rec, (rows, width)))
            else:
                grad_hh = xp.zeros(tuple(params["weight_hh"].shape), dtype=dtype, device=device)
            accumulate(backend, self.params["weight_hh" + suffix], grad_hh)
            accumulate(backend, self.params["bias" + suffix], xp.sum(flat_in, axis=0))
            if two_kinds:
                accumulate(backend, self.params[self.extra_bias + suffix],
                           xp.sum(xp.reshape(d_hh_all[..., 2 * hidden:], (steps * batch, hidden)), axis=0))
            if input_grad:
                part = xp.permute_dims(xp.reshape(flat_in @ xp.matrix_transpose(params["weight_ih"]),
                                                  (steps, batch, self.input_size)), (1, 0, 2))
                grad_x = part if grad_x is None else grad_x + part
            dh_steps.append(xp.stack(dh_seen, axis=1))
        self._dh = dh_steps  # a diagnostic of the last backward pass (grad_norms_through_time), not used by it
        return grad_x

    def _gathered(self, outs, k, per_step, views):
        """The per-step gradients as one (time, batch, width) array: ``outs[k]`` when the steps were written into
        it (the backend's cells write their results there), else the steps stacked."""
        if outs is None:
            return self.xp.stack(per_step, axis=0)
        out = outs[k]
        for t, value in enumerate(per_step):
            if views[t] is None or value is not views[t][k]:  # not written in place (a truncated step's zeros)
                out = self.backend.at_set(out, (t, ...), value)
        return out

    @property
    def grad_norms_through_time(self) -> Array | None:
        """‖dL/dh_t‖ for t = 0 .. T−1 of the last backward pass: a ``(time,)`` array on the device (None before).

        dL/dh_t is the whole gradient reaching the state at step t (from the output at t and from the steps
        after it), its norm taken over the batch and the hidden units (both directions together when
        bidirectional). With vanishing gradients it falls by orders of magnitude from the last steps to the
        first; copy it to the host with ``backend.to_host`` to print or plot.
        """
        if self._dh is None:
            return None
        xp = self.xp
        total = None
        with self.backend.activate():
            for dh in self._dh:
                part = xp.sum(dh * dh, axis=(0, 2))
                total = part if total is None else total + part
            return xp.sqrt(total)

    def _map_arrays(self, convert, **options):
        clone = super()._map_arrays(convert, **options)
        clone._dh = None  # a copy has had no backward pass
        return clone

    # -- one step of the cell (subclasses) -------------------------------------------
    def _cell_forward(self, a, state, params):  # pragma: no cover - abstract
        """One step from ``a = x_t W_ih + b`` (an array of the caller's own, which the step may overwrite) and
        the previous state (None: zeros). Returns ``(h, new_state, cache)``."""
        raise NotImplementedError

    def _cell_backward(self, dh, dc, cache, params, pass_back, out):  # pragma: no cover - abstract
        """The chain rule through one step, given dL/dh_t (read only; and dL/dc_t from later steps, LSTM).

        Returns ``(d_in, d_hh, dh_prev, dc_prev)``: dL/d(pre-activations) as seen by ``weight_ih``/``bias``
        and by ``weight_hh``, and (only when ``pass_back``) the gradient for the previous state, a new array
        of the step's own. ``out``: None, or arrays the step may write ``d_in`` (and ``d_hh``) into
        (``Backend.cells_write_out``)."""
        raise NotImplementedError


class RNN(Recurrent):
    """Elman recurrent layer with tanh: h_t = tanh(x_t W_ih + h_{t−1} W_hh + b).

    Parameters: ``weight_ih`` (input_size, hidden), ``weight_hh`` (hidden, hidden), ``bias`` (hidden,)
    (PyTorch's ``bias_ih + bias_hh``).

    Backward at step t, with g = dL/dh_t (output gradient at t plus what step t+1 sends back):
        da_t = g ⊙ (1 − h_t²)
        dL/dW_ih += x_tᵀ da_t,   dL/dW_hh += h_{t−1}ᵀ da_t,   dL/db += Σ_batch da_t,   dL/dx_t = da_t W_ihᵀ
        dL/dh_{t−1} (to step t−1) = da_t W_hhᵀ
    Each step multiplies the gradient by W_hhᵀ and by tanh' ≤ 1: unless W_hh is large it shrinks
    geometrically going back in time (vanishing gradients), which is what LSTM and GRU were built to avoid.
    """

    gate_order = ("h",)

    def _cell_forward(self, a, state, params):
        if state is not None:
            a = self.backend.add_scaled(a, state @ params["weight_hh"])  # in place where allowed: a is ours
        h = self.xp.tanh(a)
        return h, h, h

    def _cell_backward(self, dh, dc, cache, params, pass_back, out):
        h = cache
        da = dh * (1.0 - h * h)
        dh_prev = da @ self.xp.matrix_transpose(params["weight_hh"]) if pass_back else None
        return da, da, dh_prev, None


class LSTM(Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with a forget gate), PyTorch's formulation.

    Gate order along the columns of ``weight_ih`` (input_size, 4·hidden), ``weight_hh`` (hidden, 4·hidden) and
    ``bias`` (4·hidden,): **i, f, g, o** (input, forget, cell candidate, output), as ``torch.nn.LSTM``.

    Forward, with a = x_t W_ih + h_{t−1} W_hh + b split into [a_i, a_f, a_g, a_o]:
        i = σ(a_i),  f = σ(a_f),  g = tanh(a_g),  o = σ(a_o)
        c_t = f ⊙ c_{t−1} + i ⊙ g,    h_t = o ⊙ tanh(c_t)
    Backward, with g_h = dL/dh_t and g_c = dL/dc_t arriving from step t+1:
        dc = g_c + g_h ⊙ o ⊙ (1 − tanh² c_t)
        do = g_h ⊙ tanh c_t,   di = dc ⊙ g,   dg = dc ⊙ i,   df = dc ⊙ c_{t−1}
        da = [di ⊙ i(1−i), df ⊙ f(1−f), dg ⊙ (1−g²), do ⊙ o(1−o)]
        to step t−1: dL/dh_{t−1} = da W_hhᵀ,   dL/dc_{t−1} = dc ⊙ f
    The cell path multiplies the gradient only by f: a forget gate near 1 carries it across many steps.
    The state returned by ``step`` is ``(h, c)``.
    """

    gate_order = ("i", "f", "g", "o")

    # The step is the backend's fused cell (``Backend.lstm_cell_forward``/``lstm_cell_backward``): a few
    # in-place array calls on NumPy and PyTorch, one kernel besides the matrix product on CuPy.
    def _cell_forward(self, a, state, params):
        h_prev, c_prev = (None, None) if state is None else state
        h, c, cache = self.backend.lstm_cell_forward(a, h_prev, c_prev, params["weight_hh"])
        return h, (h, c), cache

    def _cell_backward(self, dh, dc, cache, params, pass_back, out):
        da, dh_prev, dc_prev = self.backend.lstm_cell_backward(dh, dc, cache, params["weight_hh"],
                                                               pass_back=pass_back, out=out and out[0],
                                                               weight_hh_t=params.get("weight_hh_t"))
        return da, da, dh_prev, dc_prev


class GRU(Recurrent):
    """Gated recurrent unit (Cho et al. 2014), PyTorch's formulation.

    Gate order along the columns of ``weight_ih`` (input_size, 3·hidden) and ``weight_hh`` (hidden, 3·hidden):
    **r, z, n** (reset, update, new), as ``torch.nn.GRU``. ``bias`` (3·hidden,) is
    [b_ir + b_hr, b_iz + b_hz, b_in]; ``bias_hn`` (hidden,) is b_hn, kept apart because the reset gate
    multiplies it:
        r = σ(x W_ir + h W_hr + b_r),   z = σ(x W_iz + h W_hz + b_z)
        n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))
        h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
    Backward, with g = dL/dh_t:
        dn = g ⊙ (1 − z),   dz = g ⊙ (h_{t−1} − n),   da_n = dn ⊙ (1 − n²)
        dr = da_n ⊙ (h W_hn + b_hn),   da_r = dr ⊙ r(1−r),   da_z = dz ⊙ z(1−z)
        seen by W_ih and bias: [da_r, da_z, da_n];   seen by W_hh: [da_r, da_z, r ⊙ da_n];  dL/db_hn = Σ r ⊙ da_n
        to step t−1: dL/dh_{t−1} = g ⊙ z + [da_r, da_z, r ⊙ da_n] W_hhᵀ
    The direct path g ⊙ z lets the gradient pass many steps when the update gate z is near 1.
    """

    gate_order = ("r", "z", "n")
    extra_bias = "bias_hn"

    # The step is the backend's fused cell (``Backend.gru_cell_forward``/``gru_cell_backward``).
    def _cell_forward(self, a, state, params):
        h, cache = self.backend.gru_cell_forward(a, state, params["weight_hh"], params["bias_hn"])
        return h, h, cache

    def _cell_backward(self, dh, dc, cache, params, pass_back, out):
        d_in, d_hh, dh_prev = self.backend.gru_cell_backward(dh, cache, params["weight_hh"], pass_back=pass_back,
                                                             out=out, weight_hh_t=params.get("weight_hh_t"))
        return d_in, d_hh, dh_prev, None


__all__ = ["GRU", "LSTM", "RNN", "Recurrent"]
