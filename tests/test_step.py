"""The training step apart from the loop: the step as a function, and what a step costs on a GPU, counted on the
CPU (``backends/counting_backend.py``: array-library calls stand in for kernel launches, host reads are
recorded)."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backends import get_backend
from backends.base import METRICS
from backprop.data import load_digits
from backprop.training import Trainer
from backprop.training.step import MicroBatch, TrainingStep

from conftest import assert_on_backend, weights


@pytest.fixture(scope="module")
def digits():
    return load_digits()


# -- calls per step and host synchronizations (issue 13: "a number the CPU can check") ----------------------------
MLP = [784, 512, 512, 10]
STEPS_PER_EPOCH = 3  # at batch 128


def _counted_epochs(monkeypatch, optimizer: str, *, epochs: int = 2, **options):
    """Train the MLP 784-512-512-10 at batch 128 on the counting backend for ``epochs`` epochs; returns the
    calls of every step (in order) and the counter (its syncs and transfers labelled by where they happened:
    "step N" inside a step, "loop" between steps)."""
    backend = get_backend("counting")
    counter = backend.counter
    model = bp.mlp(MLP, seed=0, backend=backend)
    trainer = Trainer(model, optimizer=optimizer, lr=0.01, epochs=10, batch_size=128, progress=False, log=None,
                      **options)
    host = np.random.default_rng(0)
    x = backend.from_host(host.random((STEPS_PER_EPOCH * 128, MLP[0]), dtype=np.float32))
    y = backend.from_host(host.integers(0, MLP[-1], STEPS_PER_EPOCH * 128))
    calls = []
    run = TrainingStep.run

    def counted_run(self, *args, **kwargs):
        counter.label, before = f"step {len(calls)}", counter.calls
        try:
            return run(self, *args, **kwargs)
        finally:
            calls.append(counter.calls - before)
            counter.label = "loop"

    monkeypatch.setattr(TrainingStep, "run", counted_run)
    counter.reset()
    counter.label = "loop"
    for _ in range(epochs):
        trainer.train_epoch(x, y)
    counter.label = None
    return calls, counter


# The targets of issue 13 for this MLP: at most 20 kernels per SGD step and 25 per Adam step (PyTorch eager:
# about 20-25; this library before the capabilities: 59 and 101, measured with this backend). Every step counts,
# the first too (the trainer moves the parameters into flat buffers before it).
@pytest.mark.parametrize("optimizer, most", [("sgd", 20), ("adam", 25)])
def test_an_mlp_step_makes_at_most_the_target_calls(monkeypatch, optimizer, most):
    calls, _ = _counted_epochs(monkeypatch, optimizer)
    assert len(calls) == 2 * STEPS_PER_EPOCH
    assert max(calls) <= most, calls
    # a step at which the trainer samples the gradient norms (its first few of each epoch) costs 2 more
    assert min(calls) <= max(calls) - 2, calls


def test_no_step_reads_the_device_and_the_loop_only_at_its_log_points(monkeypatch):
    calls, counter = _counted_epochs(monkeypatch, "adam", clip_norm=1.0, log_points=1)
    assert [s for s in counter.syncs if s[0] != "loop"] == []
    assert [t for t in counter.transfers if t[0] != "loop"] == []
    # per epoch: the one log point (the last step), then the epoch's figures
    assert [what for _, what in counter.syncs] == ["to_host", "to_host"] * 2


def test_the_counting_backend_counts_kernels_and_host_reads():
    backend = get_backend("counting")
    counter, xp = backend.counter, backend.xp
    x = backend.from_host(np.arange(6.0).reshape(2, 3))
    counter.reset()
    y = xp.exp(x) + 1.0  # two kernels
    view = xp.reshape(y[0:1, :], (3,))  # views: none
    assert counter.calls == 2
    _ = xp.take(y, backend.asarray([1, 0]), axis=0)  # a gather (and the index array made on the device): two
    assert counter.calls == 4
    backend.dense_forward(x, backend.from_host(np.ones((3, 4))), None, "relu")  # a capability: its kernels
    assert counter.calls == 6
    assert counter.syncs == [] and len(counter.transfers) == 1  # from_host of the weight
    counter.label = "here"
    float(view[0]), bool(view[1] > 0), backend.to_host(view)
    assert counter.syncs == [("here", "__float__"), ("here", "__bool__"), ("here", "to_host")]
    counter.label = None


# -- the step as a function ------------------------------------------------------------------------------------

def test_the_step_is_a_function_of_parameters_state_and_batch(backend, digits):
    """``step(params, state, batch, metrics)`` gives the weights, state and metrics of the trainer's own steps,
    and the loop's figures come from those metrics."""
    x, y = backend.from_host(digits.x_train[:64]), backend.from_host(digits.y_train[:64])

    def make():
        model = bp.mlp([64, 16, 10], seed=2, backend=backend)
        return model, bp.optim.Adam(model, lr=0.01)

    model, optimizer = make()
    step = TrainingStep(model, bp.CrossEntropy(), optimizer)
    params, state, metrics = [p.value for p in model.parameters()], {}, step.new_metrics()
    for start in (0, 32):
        batch = [MicroBatch(x[start:start + 32, ...], y[start:start + 32, ...], 1.0)]
        params, state, metrics, _ = step(params, state, batch, metrics)
    assert_on_backend(metrics, backend, shape=(len(METRICS),))
    figures = dict(zip(METRICS, backend.to_host(metrics).tolist()))
    assert figures["nonfinite"] == 0 and figures["good_steps"] == 2 and 0 <= figures["correct"] <= 64

    reference, reference_optimizer = make()
    trainer = Trainer(reference, optimizer=reference_optimizer, epochs=1, batch_size=32, shuffle=False,
                      progress=False, log=None)
    record = trainer.train_epoch(x, y)
    assert record["train_loss"] == pytest.approx(figures["loss_sum"] / 64, rel=1e-6)
    assert record["train_accuracy"] == pytest.approx(figures["correct"] / 64)
    for name, param in zip(model.named_parameters(), params):
        assert_on_backend(param, backend)
        np.testing.assert_array_equal(backend.to_host(param), backend.to_host(weights(reference)[name]), name)
    for name, buffers in reference_optimizer.state.items():
        for key, array in buffers.items():
            np.testing.assert_array_equal(backend.to_host(state[name][key]), backend.to_host(array))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_a_nan_loss_stops_an_epoch_of_fewer_steps_than_log_points(digits):
    """The loop reads its figures at evenly spaced log points, the last at the epoch's last step: an epoch of 3
    steps (fewer than the 20 log points) had none, and a NaN loss went on unnoticed."""
    model = bp.mlp([64, 32, 10], seed=0, backend="numpy")
    trainer = Trainer(model, optimizer="sgd", lr=1e30, epochs=2, batch_size=100, progress=False, log=None)
    with pytest.raises(bp.errors.TrainingError, match=r"NaN or infinite at epoch 1, step \d of 3"):
        trainer.fit(digits.x_train[:300], digits.y_train[:300])
    assert trainer.epoch == 0 and not trainer.history
