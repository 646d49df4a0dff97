"""The training loop: batch modes, reproducibility, resume, diagnostics and bad input."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest

import backprop as bp
from backends import get_backend
from backprop.data import load_digits
from backprop.layers import BatchNorm1D
from backprop.training import Callback, Checkpoint, EarlyStopping, GradientMonitor, Trainer, evaluate, fit
from backprop.training.interrupts import ctrl_c_held

from conftest import assert_on_backend, ones_like, weights


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _test_accuracy(model, data):
    backend = model.backend
    accuracy = evaluate(model, backend.from_host(data.x_test), backend.from_host(data.y_test),
                        bp.CrossEntropy())["accuracy"]
    return accuracy


# (batch_size, optimizer, lr, epochs, hidden) chosen so each mode passes 90% in well under a second on NumPy.
BATCH_MODES = {
    "stochastic": (1, "sgd", 0.02, 1, [64, 32, 10]),
    "mini_batch": (32, "adam", 3e-3, 4, [64, 64, 10]),
    "full_batch": ("full", "adam", 1e-2, 60, [64, 64, 10]),
}


@pytest.mark.parametrize("mode", BATCH_MODES)
def test_each_batch_mode_learns_the_digits(backend, digits, mode):
    batch_size, optimizer, lr, epochs, sizes = BATCH_MODES[mode]
    if backend.library == "array_api_strict" and mode == "stochastic":
        epochs = 1  # the reference implementation is slow per call; one pass is enough to show learning
    model = bp.mlp(sizes, seed=0, backend=backend)
    history = fit(model, digits.x_train, digits.y_train, optimizer=optimizer, lr=lr, epochs=epochs,
                  batch_size=batch_size, progress=False, log=None)
    expected_steps = {1: len(digits.x_train), 32: math.ceil(len(digits.x_train) / 32), "full": 1}[batch_size]
    assert history[-1]["steps"] == expected_steps
    assert _test_accuracy(model, digits) >= 0.90
    for param in weights(model).values():
        assert_on_backend(param, backend)


def test_same_seed_same_weights_on_numpy(digits):
    def run():
        model = bp.mlp([64, 32, 10], seed=3, backend="numpy")
        fit(model, digits.x_train[:300], digits.y_train[:300], epochs=3, batch_size=16, seed=5, progress=False,
            log=None, validation_split=0.2)
        return weights(model)

    first, second = run(), run()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_backends_agree_for_the_first_epochs(backend, digits):
    def run(on):
        model = bp.mlp([64, 32, 10], seed=3, backend=on)
        history = fit(model, digits.x_train[:256], digits.y_train[:256], epochs=2, batch_size=64, shuffle=False,
                      optimizer="sgd", lr=0.1, progress=False, log=None)
        return [r["train_loss"] for r in history], {k: on.to_host(v) for k, v in weights(model).items()}

    expected_losses, expected_weights = run(bp.get_backend("numpy"))
    losses, got_weights = run(backend)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
    for name, weight in expected_weights.items():
        np.testing.assert_allclose(got_weights[name], weight, rtol=1e-3, atol=1e-5)


def _trainer(backend, tmp_path, **options):
    model = bp.Sequential([bp.Dense(64, 32, rng=1, backend=backend), bp.ReLU(backend=backend),
                           bp.layers.Dropout(0.2, backend=backend), bp.Dense(32, 10, rng=2, backend=backend)])
    callbacks = [EarlyStopping(50)]
    return Trainer(model, optimizer="momentum", lr=0.05, epochs=4, batch_size=50, seed=9, schedule="cosine",
                   callbacks=callbacks, progress=False, log=None, **options)


def test_resume_after_interrupt_equals_an_uninterrupted_run(backend, digits, tmp_path):
    x, y = digits.x_train[:400], digits.y_train[:400]
    reference = _trainer(backend, tmp_path)
    reference.fit(x, y, validation_split=0.25)

    interrupted = _trainer(backend, tmp_path)
    step = interrupted.optimizer.step
    calls = {"n": 0}

    def step_then_interrupt():
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 3:  # in the middle of the third epoch (6 steps per epoch)
            raise KeyboardInterrupt
        step()

    interrupted.optimizer.step = step_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(x, y, validation_split=0.25)
    assert interrupted.epoch == 2
    checkpoint = tmp_path / "checkpoint.safetensors"
    interrupted.save_checkpoint(checkpoint)

    resumed = _trainer(backend, tmp_path)
    resumed.load_checkpoint(checkpoint)
    assert resumed.epoch == 2 and len(resumed.history) == 2
    resumed.fit(x, y, validation_split=0.25)
    assert resumed.epoch == 4
    for name, weight in weights(reference.model).items():
        np.testing.assert_array_equal(backend.to_host(resumed.model.named_parameters()[name].value),
                                      backend.to_host(weight))
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in reference.history]


class _CtrlCAt(Callback):
    """Sends this process a real SIGINT at the end of epoch ``epoch``, before the callbacks after it run."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, record):
        if trainer.epoch == self.epoch:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("moment", ["epoch_end_callbacks", "snapshot"])
def test_ctrl_c_at_an_epoch_boundary_checkpoints_a_state_that_resumes_exactly(digits, tmp_path, moment):
    """Ctrl-C can land anywhere; between epochs it must neither roll back a counted epoch nor skip callbacks."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a real Ctrl-C, as a user sends it
    x, y = digits.x_train[:400], digits.y_train[:400]
    reference = _trainer(get_backend("numpy"), tmp_path)
    reference.fit(x, y, validation_split=0.25)

    checkpoint = tmp_path / "checkpoint.safetensors"
    interrupted = _trainer(get_backend("numpy"), tmp_path)
    if moment == "epoch_end_callbacks":
        interrupted.callbacks.insert(0, _CtrlCAt(epoch=2))  # before EarlyStopping and the Checkpoint
    else:
        take_snapshot, calls = interrupted._take_snapshot, []

        def snapshot_with_ctrl_c():
            calls.append(1)
            if len(calls) == 3:  # at the start of epoch 3
                signal.raise_signal(signal.SIGINT)
            return take_snapshot()

        interrupted._take_snapshot = snapshot_with_ctrl_c
    interrupted.callbacks.append(Checkpoint(checkpoint))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(x, y, validation_split=0.25)
    assert interrupted.epoch == 2 and len(interrupted.history) == 2

    resumed = _trainer(get_backend("numpy"), tmp_path)
    resumed.load_checkpoint(checkpoint)
    assert resumed.epoch == 2
    resumed.fit(x, y, validation_split=0.25)
    for name, weight in weights(reference.model).items():
        np.testing.assert_array_equal(resumed.model.named_parameters()[name].value, weight)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in reference.history]


def test_ctrl_c_is_held_only_where_python_handles_it():
    def custom(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, custom)
    try:
        with ctrl_c_held():
            assert signal.getsignal(signal.SIGINT) is custom  # a handler of the user's is left alone
    finally:
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_held():
            signal.raise_signal(signal.SIGINT)
            finished = True
    assert finished and signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_weights(digits):
    model = bp.mlp([64, 32, 10], seed=0, backend="numpy")
    trainer = Trainer(model, optimizer="sgd", lr=0.05, epochs=5, batch_size=100, progress=False, log=None)
    trainer.fit(digits.x_train, digits.y_train)
    good = {k: v.copy() for k, v in weights(model).items()}
    trainer.epochs = 6
    trainer.optimizer.lr = trainer.base_lr = 1e30  # certain to blow up
    with pytest.raises(bp.errors.TrainingError, match=r"NaN or infinite at epoch 6, step \d+ of 15; likely causes: "
                                                       r"learning rate too high"):
        trainer.fit(digits.x_train, digits.y_train)
    for name, weight in weights(model).items():
        np.testing.assert_array_equal(weight, good[name])


class _WeightsEveryEpoch(Callback):
    """Host copies of the parameters at the end of every epoch, taken apart from what the trainer keeps."""

    def __init__(self):
        self.weights = {}

    def on_epoch_end(self, trainer, record):
        backend = trainer.model.backend
        self.weights[record["epoch"]] = {name: backend.to_host(array).copy()
                                         for name, array in weights(trainer.model).items()}


def test_early_stopping_restores_the_best_weights(digits):
    model = bp.mlp([64, 128, 10], seed=0, backend="numpy")
    stopper, recorder = EarlyStopping(2, monitor="val_loss"), _WeightsEveryEpoch()
    history = fit(model, digits.x_train[:200], digits.y_train[:200], optimizer="adam", lr=0.05, epochs=60,
                  batch_size=10, validation_split=0.5, callbacks=[recorder, stopper], progress=False, log=None)
    losses = [record["val_loss"] for record in history]
    best = 1 + losses.index(min(losses))  # the epoch of the lowest validation loss (the first, on a tie)
    assert stopper.best_epoch == best and len(history) == best + 2 < 60  # it overfits 100 examples quickly
    assert sorted(recorder.weights) == list(range(1, len(history) + 1))
    for name, weight in weights(model).items():
        np.testing.assert_array_equal(weight, recorder.weights[best][name], err_msg=name)
    last = recorder.weights[len(history)]
    assert any(not np.array_equal(last[name], recorder.weights[best][name]) for name in last)  # a real restore


def test_set_weights_gives_the_model_copies_of_the_saved_weights(backend, digits):
    """What early stopping and the roll-back of an interrupted epoch rely on, on every backend (arrays may be
    immutable: the model gets new arrays), with a buffer (running statistics) as well as parameters."""
    model = bp.Sequential([bp.Dense(64, 16, rng=0, backend=backend), BatchNorm1D(16, backend=backend),
                           bp.ReLU(backend=backend), bp.Dense(16, 10, rng=1, backend=backend)])
    trainer = Trainer(model, optimizer="sgd", lr=0.5, batch_size=50, progress=False, log=None)
    x, y = backend.from_host(digits.x_train[:100]), backend.from_host(digits.y_train[:100])
    saved = trainer.copy_weights()
    assert set(saved) == {"param/0.weight", "param/0.bias", "param/1.weight", "param/1.bias", "param/3.weight",
                          "param/3.bias", "buffer/1.running_mean", "buffer/1.running_var"}
    host_saved = {key: backend.to_host(array) for key, array in saved.items()}
    trainer.train_epoch(x, y)
    for key, array in trainer.copy_weights().items():  # training changed every weight and buffer
        assert not np.array_equal(backend.to_host(array), host_saved[key]), key
    trainer.set_weights(saved)
    for key, array in trainer.copy_weights().items():
        assert_on_backend(array, backend, shape=host_saved[key].shape)
        np.testing.assert_array_equal(backend.to_host(array), host_saved[key], err_msg=key)
    trainer.train_epoch(x, y)  # the steps after a restore change the model's copies, never the saved weights
    for key, array in saved.items():
        np.testing.assert_array_equal(backend.to_host(array), host_saved[key], err_msg=key)


class _ForgetsToStore(bp.optim.SGD):
    """An optimizer with the bug immutable arrays exposed: it computes its update and then drops it (JAX's
    ``w -= lr * g`` inside a function rebinds a local name and leaves the model's array as it was)."""

    def _update(self, group, params, grads, states, steps):
        _ = [param - group["lr"] * grad for param, grad in zip(params, grads)]  # computed, never stored
        return params, states


def test_a_step_that_changes_no_weight_stops_training(backend, digits):
    model = bp.mlp([64, 8, 10], seed=0, backend=backend)
    before = {name: backend.to_host(array) for name, array in weights(model).items()}
    trainer = Trainer(model, optimizer=_ForgetsToStore(model, lr=0.1), epochs=3, batch_size=50, progress=False,
                      log=None)
    with pytest.raises(bp.TrainingError, match=r"^the optimizer's first step of epoch 1 left every weight exactly "
                                               r"as it was although the gradients are non-zero \(lr=0.1\)"):
        trainer.fit(digits.x_train[:100], digits.y_train[:100])
    assert trainer.epoch == 0 and not trainer.history
    for name, array in weights(model).items():
        np.testing.assert_array_equal(backend.to_host(array), before[name])


def test_steps_that_may_leave_the_weights_alone_do_not_stop_training(backend, digits):
    """lr = 0 (a schedule's end), or gradients that are all zero: the weights stay, and that is right."""
    x, y = digits.x_train[:40], digits.y_train[:40]
    model = bp.mlp([64, 8, 10], seed=0, backend=backend)
    trainer = Trainer(model, optimizer=_ForgetsToStore(model, lr=0.1), epochs=1, batch_size=20, progress=False,
                      log=None)
    trainer.optimizer.lr = 0.0
    trainer.schedule = lambda epoch, base_lr: 0.0
    assert len(trainer.fit(x, y)) == 1
    no_bias = bp.Sequential([bp.Dense(64, 10, bias=False, rng=0, backend=backend)])
    trainer = Trainer(no_bias, optimizer=_ForgetsToStore(no_bias, lr=0.1), epochs=1, batch_size=20,
                      progress=False, log=None)
    assert len(trainer.fit(np.zeros_like(x), y)) == 1  # zero inputs: every weight gradient is 0


def test_the_weight_check_runs_at_the_first_step_of_each_epoch_only(monkeypatch, digits):
    checks = []
    original = Trainer._check_the_step_changed_weights
    monkeypatch.setattr(Trainer, "_check_the_step_changed_weights",
                        lambda self, before: checks.append(self.epoch) or original(self, before))
    model = bp.mlp([64, 8, 10], seed=0, backend="numpy")
    history = fit(model, digits.x_train[:100], digits.y_train[:100], epochs=3, batch_size=10, progress=False,
                  log=None)
    assert [record["steps"] for record in history] == [10, 10, 10] and checks == [0, 1, 2]


class _InputRecorder(bp.Layer):
    """An identity layer that keeps the inputs it sees in training."""

    def __init__(self, backend):
        super().__init__(backend=backend)
        self.seen = []

    def begin_update(self, x, *, training=True):
        if training:
            self.seen.append(self.backend.to_host(x)[:, 0].astype(int).tolist())
        return x, lambda grad_output: grad_output


# -- gradient accumulation ------------------------------------------------------------------------------------

def test_update_bounds_lay_out_micro_batches():
    from backprop.training.batches import batch_bounds, update_bounds

    assert update_bounds(10, 4) == [[b] for b in batch_bounds(10, 4)]
    assert update_bounds(23, 3, 4) == [[(0, 3), (3, 6), (6, 9), (9, 12)], [(12, 15), (15, 18), (18, 21), (21, 23)]]
    assert update_bounds(23, 3, 4, drop_last=True) == [[(0, 3), (3, 6), (6, 9), (9, 12)]]  # a short *update* drops
    assert update_bounds(7, 3, 4) == [[(0, 3), (3, 6), (6, 7)]]  # one update: the whole epoch
    assert update_bounds(7, None, 3) == [[(0, 2), (2, 4), (4, 7)]]  # full batch in 3 parts
    assert update_bounds(2, None, 5) == [[(0, 1), (1, 2)]]  # never an empty micro-batch


# (batch_size, accumulate_steps, drop_last, n): micro-batches that do and do not divide the update, a short last
# update of one short micro-batch (n = 90 = 2·32 + 26: micro-batches 8,8,8,2 last), drop_last, full batch.
ACCUMULATION = {
    "sgd-8x4": ("sgd", 8, 4, False, 90),
    "adam-8x4": ("adam", 8, 4, False, 90),
    "adam-5x3-drop_last": ("adam", 5, 3, True, 97),
    "momentum-full-x3": ("momentum", "full", 3, False, 61),
}


@pytest.mark.parametrize("case", ACCUMULATION)
def test_accumulated_micro_batches_give_the_update_of_one_batch_k_times_larger(backend, digits, case):
    optimizer, batch_size, k, drop_last, n = ACCUMULATION[case]
    big_batch = "full" if batch_size == "full" else batch_size * k

    def run(batch, accumulate_steps):
        model = bp.mlp([64, 16, 10], seed=2, backend=backend)
        trainer = Trainer(model, optimizer=optimizer, lr=0.05 if optimizer != "adam" else 0.01, epochs=2,
                          batch_size=batch, accumulate_steps=accumulate_steps, drop_last=drop_last, seed=4,
                          progress=False, log=None)
        history = trainer.fit(digits.x_train[:n], digits.y_train[:n])
        for array in [*weights(model).values(), *model.named_gradients().values()]:
            assert_on_backend(array, backend)
        return history, {name: backend.to_host(array) for name, array in weights(model).items()}

    expected_history, expected = run(big_batch, 1)
    history, got = run(batch_size, k)
    for name, weight in expected.items():
        # float32: two roundings of one sum (the big batch sums its rows in one product, the micro-batches in k)
        np.testing.assert_allclose(got[name], weight, rtol=1e-5, atol=1e-6, err_msg=name)
    for have, want in zip(history, expected_history, strict=True):
        assert have["steps"] == want["steps"]
        assert have["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert have["grad_norms"] == pytest.approx(want["grad_norms"], rel=1e-4)
    moved = max(float(np.abs(got[name] - bp.mlp([64, 16, 10], seed=2, backend="numpy").named_parameters()[name]
                             .value).max()) for name in got)
    assert moved > 1e-3  # the weights did train


def test_the_shuffle_follows_the_seed(backend):
    """The order of the examples: the same for the same seed, different for another seed or another epoch."""
    n = 24
    x = np.arange(n, dtype=np.float32)[:, None]  # each example's one feature is its index
    y = np.arange(n) % 2

    def orders(seed):
        recorder = _InputRecorder(backend)
        model = bp.Sequential([recorder, bp.Dense(1, 2, rng=0, backend=backend)])
        fit(model, x, y, optimizer="sgd", lr=0.01, epochs=2, batch_size=4, seed=seed, progress=False, log=None)
        per_epoch = [sum(recorder.seen[i:i + n // 4], []) for i in range(0, len(recorder.seen), n // 4)]
        assert len(per_epoch) == 2 and all(sorted(order) == list(range(n)) for order in per_epoch)
        return per_epoch

    five, six = orders(5), orders(6)
    assert orders(5) == five
    assert five[0] != five[1]  # each epoch is shuffled anew
    assert five[0] != six[0] and five[1] != six[1]
    assert five[0] != list(range(n))


def test_vanishing_gradients_are_recorded_and_warned(digits):
    sizes = [64] + [32] * 8 + [10]
    model = bp.mlp(sizes, activation_name="sigmoid", seed=0, backend="numpy")
    messages = []
    with pytest.warns(RuntimeWarning, match="vanishing gradients: 0.weight"):
        history = fit(model, digits.x_train[:300], digits.y_train[:300], optimizer="sgd", lr=0.01, epochs=4,
                      batch_size=50, callbacks=[GradientMonitor(patience=2)], progress=False, log=messages.append)
    norms = history[-1]["grad_norms"]
    assert norms["0.weight"] < 1e-3 * norms[f"{2 * (len(sizes) - 2)}.weight"]
    assert any("vanishing" in m for m in messages)


def test_exploding_gradients_are_warned(digits):
    model = bp.mlp([64, 32, 10], seed=0, backend="numpy")
    big = digits.x_train[:100] * 1e5
    with pytest.warns(RuntimeWarning, match="exploding gradients"):
        fit(model, big, digits.y_train[:100], optimizer="sgd", lr=1e-12, epochs=1, batch_size=100,
            callbacks=[GradientMonitor()], progress=False, log=None)


def test_gradient_clipping_bounds_the_update(digits):
    model = bp.mlp([64, 32, 10], seed=0, backend="numpy")
    before = {k: v.copy() for k, v in weights(model).items()}
    fit(model, digits.x_train[:64] * 1e3, digits.y_train[:64], optimizer="sgd", lr=1.0, epochs=1,
        batch_size="full", clip_norm=0.5, progress=False, log=None)
    change = math.sqrt(sum(float(np.sum((model.named_parameters()[k].value - before[k]) ** 2)) for k in before))
    assert change <= 0.5 + 1e-5


def test_learning_rate_schedule_is_applied(digits):
    model = bp.mlp([64, 16, 10], seed=0, backend="numpy")
    history = fit(model, digits.x_train[:64], digits.y_train[:64], optimizer="sgd", lr=0.1, epochs=4,
                  schedule="step", batch_size=32, warmup_epochs=0, progress=False, log=None)
    assert [r["lr"] for r in history][0] == pytest.approx(0.1)
    assert history[-1]["lr"] <= 0.1


@pytest.mark.parametrize("x_change, y_change, error, message", [
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), None, bp.errors.DataError,
     r"training data: 1 NaN or infinite feature values"),
    (None, lambda y: np.where(np.arange(y.size) == 3, 12, y), bp.errors.DataError,
     r"labels must be class numbers 0..9 for this model's 10 outputs, found values from 0 to 12"),
    (lambda x: x[:, :60], None, bp.ShapeError, r"training data has 60 features per example, but the model expects 64"),
    (None, lambda y: y[:-1], bp.ShapeError, r"training data: 100 examples but 99 labels"),
])
def test_bad_training_data(digits, x_change, y_change, error, message):
    x, y = digits.x_train[:100], digits.y_train[:100]
    x = x_change(x) if x_change else x
    y = y_change(y) if y_change else y
    with pytest.raises(error, match=message):
        fit(bp.mlp([64, 8, 10], backend="numpy"), x, y, epochs=1, progress=False, log=None)


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"batch_size": 0}, "batch size must be a positive integer or 'full', got 0"),
    ({"batch_size": "many"}, "batch size must be a positive integer or 'full'"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"lr": -0.1}, "learning rate must be a positive finite number"),
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
    ({"clip_norm": -1.0}, "clip_norm must be a positive (finite )?number"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"accumulate_steps": 0}, r"accumulate_steps \(micro-batches per update\) must be a positive integer, got 0"),
    ({"accumulate_steps": 2.0}, "accumulate_steps .* must be a positive integer, got 2.0"),
    ({"accumulate_steps": True}, "accumulate_steps .* must be a positive integer, got True"),
])
def test_bad_hyperparameters(options, message):
    with pytest.raises(bp.ConfigError, match=message):
        Trainer(bp.mlp([4, 3], backend="numpy"), **options)


def test_dropout_is_inverted_and_off_in_evaluation(backend):
    layer = bp.layers.Dropout(0.25, seed=1, backend=backend)
    x = backend.from_host(np.ones((200, 50), np.float32))
    assert layer(x) is x
    y, backprop = layer.begin_update(x, training=True)
    y = backend.to_host(y)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs(y.mean() - 1.0) < 0.05 and abs((y == 0).mean() - 0.25) < 0.03
    grad = backend.to_host(backprop(ones_like(backend, x)))
    np.testing.assert_array_equal(grad, y)  # the same mask scales the gradient
    layer.reseed(1)
    again = backend.to_host(layer(x, training=True))
    np.testing.assert_array_equal(again, y)
    with pytest.raises(bp.ConfigError, match=r"p must be a probability in \[0, 1\), got 1.0"):
        bp.layers.Dropout(1.0)


def test_memory_does_not_grow_from_epoch_to_epoch(digits):
    import tracemalloc

    model = bp.mlp([64, 64, 10], seed=0, backend="numpy")
    trainer = Trainer(model, optimizer="adam", epochs=10**6, batch_size=16, progress=False, log=None)
    backend = model.backend
    x, y = backend.from_host(digits.x_train), backend.from_host(digits.y_train)
    trainer.train_epoch(x, y)  # the first epoch creates the optimizer state
    trainer.history.clear()
    tracemalloc.start()
    try:
        trainer.train_epoch(x, y)
        trainer.history.clear()
        after_one, _ = tracemalloc.get_traced_memory()
        for _ in range(3):
            trainer.train_epoch(x, y)
            trainer.history.clear()  # the history grows by one small record per epoch by design
        after_four, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after_four - after_one < 64 * 1024, f"grew by {after_four - after_one} bytes over three epochs"
