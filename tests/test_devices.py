"""Devices are explicit: every public call runs with its backend's device current, so the arrays backprop
creates land on the model's device, also on a library with a *current device* (CuPy).

No GPU is available to the tests: ``simulated_cupy`` simulates CuPy's device model on array_api_strict's
devices (see ``backends/simulated_cupy.py``), and the suite runs with the model on its device 1 while device
0 is current. The site tests below run on every backend and are called outside any ``activate()``, as a user
calls them; on ``simulated_cupy:1`` each one failed before its call entered the device.
"""

from __future__ import annotations

import contextlib
import types

import array_api_compat
import array_api_strict
import numpy as np
import pytest

import backends
import backprop as bp
from backends import registry, simulated_cupy
from backprop.layers import RNN, AvgPool2D, BatchNorm1D, Conv2D, Embedding, LayerNorm, MaxPool2D

from conftest import assert_on_backend, ones_like, weights

SIMULATED = "simulated_cupy:1"


@pytest.fixture
def simulated():
    return backends.get_backend(SIMULATED)


# -- the simulation itself ------------------------------------------------------------------------------------

def test_creation_ignores_device_and_lands_on_the_current_device(simulated):
    """As array_api_compat.cupy: zeros/ones/full/arange/empty/eye/linspace and *_like ignore device=."""
    xp = simulated.xp
    assert simulated_cupy.current_device() == 0
    made = [xp.zeros((2,), dtype=xp.float32, device=simulated.device), xp.arange(3, device=simulated.device),
            xp.full((2,), 1.0, device=simulated.device), xp.eye(2, device=simulated.device)]
    assert all(a.device == array_api_strict.Device("CPU_DEVICE") for a in made)
    x = simulated.from_host(np.ones(3, np.float32))
    assert xp.zeros_like(x).device == array_api_strict.Device("CPU_DEVICE")  # not x's device: the current one
    with simulated.activate():
        assert simulated_cupy.current_device() == 1
        assert xp.zeros((2,), dtype=xp.float32).device == simulated.device == xp.zeros_like(x).device
    assert simulated_cupy.current_device() == 0


def test_kernels_on_another_device_than_the_current_one_fail_as_on_cupy(simulated):
    x = simulated.from_host(np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(ValueError, match="Array device must be same as the current device: array device = 1 "
                                         "while current = 0"):
        x + 1.0
    with pytest.raises(ValueError, match="Array device must be same as the current device"):
        simulated.xp.sum(x)
    np.testing.assert_array_equal(simulated.to_host(x[1, ::2]), [3.0, 5.0])  # a view and a host copy: no kernel
    with simulated.activate():
        assert float(simulated.xp.sum(x + 1.0)) == 21.0
    wrong = simulated.xp.ones((2, 3), dtype=simulated.xp.float32)
    with pytest.raises(ValueError, match="array device = 0 while current = 1"), simulated.activate():
        x + wrong  # made outside the device's activation, then used inside it


def test_its_arrays_name_its_namespace_and_do_not_mix_with_plain_strict_arrays(simulated):
    x = simulated.from_host(np.ones(2, np.float32))
    assert array_api_compat.array_namespace(x) is simulated.xp  # what optimizers and losses look up
    assert simulated.owns(x) and not backends.get_backend("array_api_strict:device1").owns(x)
    assert backends.backend_of(x) is simulated
    plain = array_api_strict.asarray([1.0, 2.0], dtype=array_api_strict.float32, device=simulated.device)
    with pytest.raises(TypeError, match="Multiple namespaces"):
        array_api_compat.array_namespace(x, plain)
    with pytest.raises(TypeError, match="two libraries"), simulated.activate():
        simulated.xp.add(x, plain)


def test_asarray_honours_device_and_otherwise_moves_to_the_current_device(simulated):
    """As array_api_compat.cupy.asarray (device= enters that device) and cupy.asarray (the current one)."""
    xp = simulated.xp
    assert xp.asarray([1.0], device=simulated.device).device == simulated.device
    assert xp.asarray([1.0]).device == array_api_strict.Device("CPU_DEVICE")
    x = simulated.from_host(np.ones(2, np.float32))
    moved = xp.asarray(x)  # outside the device: moved (copied) to the current one
    assert moved.device == array_api_strict.Device("CPU_DEVICE") and x.device == simulated.device
    with simulated.activate():
        assert xp.asarray(x) is x


def test_activation_is_reentrant_and_restores_the_device_before_it(simulated):
    other = backends.get_backend("simulated_cupy:2")
    with simulated.activate():
        with other.activate():
            assert simulated_cupy.current_device() == 2
            with other.activate():
                assert simulated_cupy.current_device() == 2
        assert simulated_cupy.current_device() == 1
    assert simulated_cupy.current_device() == 0


def test_the_simulated_backend_is_listed_on_its_non_current_device(simulated):
    family = next(family for family in backends.families() if family.name == "simulated_cupy")
    assert family.listed_devices() == ["1"] and "GPU 0 is current" in simulated.device_name
    with pytest.raises(backends.BackendUnavailable, match="simulated GPU number 0-2"):
        backends.get_backend("simulated_cupy:7")


# -- every public call runs on the model's device ---------------------------------------------------------------

def test_your_own_layer_and_loss_run_on_the_device_of_their_backend(simulated):
    seen = []

    class Double(bp.Layer):
        def begin_update(self, x, *, training=True):
            seen.append(("forward", simulated_cupy.current_device()))

            def backprop(grad_output):
                seen.append(("backward", simulated_cupy.current_device()))
                return grad_output * 2.0

            return x * 2.0, backprop

    class Total(bp.Loss):
        def begin_update(self, prediction, target):
            seen.append(("loss", simulated_cupy.current_device()))

            def backprop():
                seen.append(("loss backward", simulated_cupy.current_device()))
                return ones_like(simulated, prediction)

            return simulated.xp.sum(prediction - target), backprop

    layer, loss = Double(backend=simulated), Total()
    x = simulated.from_host(np.ones((2, 3), np.float32))
    y, backprop = layer.begin_update(x)
    value, grad = loss.value_and_grad(y, x)  # the closures run later, outside any activation: still on device 1
    assert_on_backend(backprop(grad), simulated, shape=(2, 3))
    assert float(simulated.to_host(value)) == 6.0
    assert float(simulated.to_host(loss(layer(x), x))) == 6.0  # the plain calls: the value only
    assert seen == [("forward", 1), ("loss", 1), ("loss backward", 1), ("backward", 1), ("forward", 1), ("loss", 1)]
    assert simulated_cupy.current_device() == 0  # and the current device is given back


def test_fit_runs_its_callbacks_on_the_device_and_saves_and_loads_there(simulated, tmp_path):
    devices = []

    class Where(bp.Callback):
        def on_epoch_end(self, trainer, record):
            devices.append(simulated_cupy.current_device())

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, size=40)
    model = bp.mlp([4, 8, 3], seed=0, backend=simulated)
    history = bp.fit(model, x, y, epochs=2, batch_size=16, validation_split=0.25, clip_norm=1.0, progress=False,
                     log=None, callbacks=[Where(), bp.EarlyStopping(1, restore_best=True)])
    assert devices == [1, 1] and all(np.isfinite(r["train_loss"]) for r in history)
    bp.save_model(tmp_path / "m.safetensors", model)
    loaded = bp.load_model(tmp_path / "m.safetensors", backend=simulated)
    for name, array in weights(loaded).items():
        assert_on_backend(array, simulated, shape=model.named_parameters()[name].value.shape)
    figures = bp.evaluate(loaded, simulated.from_host(x), simulated.from_host(y), bp.CrossEntropy())
    loss, accuracy = figures["loss"], figures["accuracy"]
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    assert simulated_cupy.current_device() == 0


# -- the sites that created arrays on the current device (on every backend) --------------------------------------

def test_cross_entropy_one_hot_of_integer_labels_is_made_on_the_device(backend):  # losses.py (every step)
    logits = backend.from_host(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    labels = backend.from_host(np.array([0, 2, 1, 2]))
    value, grad = bp.CrossEntropy().value_and_grad(logits, labels)
    assert_on_backend(value, backend, shape=())
    assert_on_backend(grad, backend, shape=(4, 3))


def test_clipping_makes_its_norm_and_factor_on_the_device(backend):  # optim/clip.py
    model = bp.mlp([3, 2], seed=0, backend=backend)
    assert_on_backend(bp.optim.clip.global_grad_norm(model), backend, shape=())  # no gradients yet: a zero
    _backward_pass(model, (2, 3), (2, 2))
    assert_on_backend(bp.clip_grad_norm(model, 1e-3), backend, shape=())
    for name, grad in model.named_gradients().items():
        assert_on_backend(grad, backend, shape=model.named_parameters()[name].value.shape)


def test_padding_and_col2im_are_made_on_the_device(backend):  # backends/convolution.py, pooling
    x = backend.from_host(np.random.default_rng(1).normal(size=(2, 1, 4, 4)).astype(np.float32))
    for layer in (Conv2D(1, 2, 3, padding=1, rng=0, backend=backend), MaxPool2D(2, padding=1, backend=backend),
                  AvgPool2D(2, padding=1, backend=backend)):
        if isinstance(layer, Conv2D):
            layer.use_fast_path = False  # the portable im2col path, which every backend without a kernel runs
        y, backprop = layer.begin_update(x)
        assert_on_backend(y, backend)
        assert_on_backend(backprop(ones_like(backend, y)), backend, shape=(2, 1, 4, 4))
        for name, grad in layer.named_gradients().items():
            assert_on_backend(grad, backend, shape=layer.named_parameters()[name].value.shape)


def test_embedding_gradient_is_made_on_the_device(backend):  # layers/embedding.py
    layer = Embedding(5, 2, rng=0, backend=backend)
    y, backprop = layer.begin_update(backend.from_host(np.array([[0, 4, 4]])))
    backprop(ones_like(backend, y))
    assert_on_backend(layer.params["weight"].grad, backend, shape=(5, 2))
    np.testing.assert_array_equal(backend.to_host(layer.params["weight"].grad)[:, 0], [1, 0, 0, 0, 2])


def test_optimizer_state_is_made_on_the_device(backend):  # optim/base.py (zeros_like)
    model = bp.mlp([3, 2], seed=0, backend=backend)
    optimizer = bp.Adam(model, lr=0.1)
    _backward_pass(model, (2, 3), (2, 2))
    optimizer.step()
    arrays, _ = optimizer.state_dict()
    assert set(arrays) == {f"{p}.{b}" for p in ("0.weight", "0.bias") for b in ("exp_avg", "exp_avg_sq")}
    for array in [*arrays.values(), *weights(model).values()]:
        assert_on_backend(array, backend)


def test_parameters_made_by_constructors_are_on_the_device(backend):  # layers/normalization.py, recurrent.py
    for layer in (BatchNorm1D(3, backend=backend), LayerNorm(3, backend=backend), RNN(2, 3, rng=0, backend=backend)):
        for array in [*weights(layer).values(), *layer.buffers.values()]:
            assert_on_backend(array, backend)


def test_trainer_copies_and_epoch_figures_are_made_on_the_device(backend):  # training/trainer.py
    model = bp.mlp([3, 4, 2], seed=0, backend=backend)
    trainer = bp.Trainer(model, epochs=1, batch_size=4, progress=False, log=None)
    for array in trainer.copy_weights().values():
        assert_on_backend(array, backend)
    x = backend.from_host(np.random.default_rng(2).normal(size=(10, 3)).astype(np.float32))
    y = backend.from_host(np.array([0, 1] * 5))
    record = trainer.train_epoch(x, y)  # its running loss, accuracy and finiteness are 0-d device arrays
    assert np.isfinite(record["train_loss"]) and 0 <= record["train_accuracy"] <= 1
    assert set(record["grad_norms"]) == set(model.named_parameters())


def test_gradient_all_reduce_packs_on_the_device(backend):  # distributed/communicator.py
    pytest.importorskip("mpi4py")
    from backprop.distributed import world

    model = bp.mlp([3, 2], seed=0, backend=backend)
    communicator = world()  # one rank: the host all-reduce, but the packing is the same
    communicator.allreduce_gradients(model)  # a rank without rows (no gradients): zeros for every parameter
    for name, grad in model.named_gradients().items():
        assert_on_backend(grad, backend, shape=model.named_parameters()[name].value.shape)
        assert not backend.to_host(grad).any()
    model.zero_grad()
    _backward_pass(model, (2, 3), (2, 2))
    expected = backend.to_host(model.layers[0].params["weight"].grad) * 0.5
    model.layers[0].params["bias"].grad = None  # a parameter without a gradient counts as zeros
    communicator.allreduce_gradients(model, 0.5)
    assert_on_backend(model.layers[0].params["bias"].grad, backend, shape=(2,))
    assert not backend.to_host(model.layers[0].params["bias"].grad).any()
    np.testing.assert_allclose(backend.to_host(model.layers[0].params["weight"].grad), expected, rtol=1e-6)


def _ones(backend, shape):
    return backend.from_host(np.ones(shape, np.float32))


def _backward_pass(model, input_shape, output_shape):
    """A forward and a backward pass of ones (the gradients land in the model's parameters)."""
    _, backprop = model.begin_update(_ones(model.backend, input_shape))
    return backprop(_ones(model.backend, output_shape))


# -- each rank of a distributed job loads its own GPU, and no other ---------------------------------------------

@pytest.fixture
def fake_cupy(monkeypatch):
    """A registry whose ``cupy`` family records the GPUs it loads (where real CuPy would open a CUDA context;
    each one a simulated GPU); a GPU number the device count does not reach is unavailable."""
    monkeypatch.setattr(registry, "_families", dict(registry._families))
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.setattr(registry, "_instances", {})
    monkeypatch.setattr(registry, "_auto_choice", None)
    loaded = []

    import backends.cupy_backend as cupy_backend
    import backends.nccl as nccl

    def load(device):
        if int(device or 0) >= cupy_backend.cuda_gpu_count():
            raise backends.BackendUnavailable(f"cupy:{device}", "no such GPU")
        loaded.append(device)
        return simulated_cupy.SimulatedCupyBackend(int(device or 0))

    backends.register_backend(backends.BackendFamily("cupy", load, aliases=("cuda",),
                                                     rank_devices=lambda device: nccl.visible_gpus()), replace=True)

    monkeypatch.setattr(cupy_backend, "cuda_gpu_count", lambda: 2)
    monkeypatch.setattr(nccl, "visible_gpus", lambda: 2)
    return loaded


@pytest.mark.parametrize("spec", ["cupy", "cuda", "cupy:0", "auto"])
def test_a_rank_loads_only_its_own_gpu(fake_cupy, spec):
    from backprop.distributed import device_backend

    rank_3_of_4 = types.SimpleNamespace(size=4, local_rank=1, local_size=2)  # 2 ranks on each of 2 machines
    backend = device_backend(spec, rank_3_of_4)
    assert backend.name == "simulated_cupy:1" and fake_cupy == ["1"]  # its GPU on its machine, never GPU 0


def test_a_rank_without_a_gpu_gets_numpy_under_auto(fake_cupy, monkeypatch):
    import backends.cupy_backend as cupy_backend
    import backends.torch_backend as torch_backend
    from backprop.distributed import device_backend

    monkeypatch.setattr(cupy_backend, "cuda_gpu_count", lambda: 0)
    monkeypatch.setattr(torch_backend, "cuda_gpu_count", lambda: 0)
    with pytest.warns(RuntimeWarning, match="no GPU backend"):
        assert device_backend("auto", types.SimpleNamespace(size=2, local_rank=1)).name == "numpy"
    assert fake_cupy == []


def test_distributed_train_hands_the_spec_to_the_rank_unloaded(fake_cupy, monkeypatch, tmp_path):
    """``backprop --backend cupy train --distributed``: nothing loads the backend before the rank has chosen its
    GPU (before this, the CLI loaded ``cupy`` — GPU 0 — in every rank first)."""
    import backprop.distributed
    import backprop.runs
    from backprop.cli import main

    calls = []

    class OneOfTwoRanks:
        is_root, size = True, 2

        def abort_on_error(self):
            return contextlib.nullcontext()

        def broadcast_object(self, value):
            return value

    monkeypatch.setattr(backprop.distributed, "world", lambda: OneOfTwoRanks())
    monkeypatch.setattr(backprop.runs, "train_run", lambda options, **kw: calls.append((kw["backend"],
                                                                                        list(fake_cupy))))
    assert main(["--backend", "cupy", "train", "--distributed", "--no-progress", "--output",
                 str(tmp_path / "run")]) == 0
    assert calls == [("cupy", [])]
    assert main(["--backend", "cupu", "train", "--distributed", "--output", str(tmp_path / "run2")]) == 2
    assert len(calls) == 1 and not (tmp_path / "run2").exists()


def test_parse_spec_names_the_family_and_loads_nothing(fake_cupy):
    assert backends.parse_spec(" CUDA:1 ") == ("cupy", "1")
    assert backends.parse_spec("auto") == ("auto", None)
    assert backends.parse_spec("torch:cuda:0") == ("torch", "cuda:0")
    with pytest.raises(backends.UnknownBackend, match="unknown backend 'tensorflow'"):
        backends.parse_spec("tensorflow")
    assert fake_cupy == []


# -- the CLI and the examples, on the simulated GPU 1 -----------------------------------------------------------

def test_the_cli_commands_run_on_the_models_device(tmp_path, capsys):
    from backprop.cli import main
    from backprop.data import load_digits

    out = tmp_path / "run"
    assert main(["--backend", SIMULATED, "train", "--epochs", "1", "--hidden", "16", "--batch-size", "128",
                 "--no-progress", "--no-plots", "--output", str(out)]) == 0
    assert "with simulated_cupy:1" in capsys.readouterr().out
    assert main(["--backend", SIMULATED, "evaluate", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    features = tmp_path / "rows.npy"
    np.save(features, load_digits().x_test[:3] * 16.0)  # raw pixel values, as the model file's scaler expects
    assert main(["--backend", SIMULATED, "predict", str(out), str(features)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["backends", "--require", SIMULATED]) == 0
    assert simulated_cupy.current_device() == 0


def test_the_examples_with_array_code_of_their_own_run_on_the_models_device(capsys):
    from backprop.examples import adding_problem, char_lm

    assert char_lm.main(["--max-chars", "2000", "--epochs", "1", "--seq-len", "8", "--hidden", "4", "--batch-size",
                         "64", "--sample-length", "5", "--prompt", "From", "--quiet", "--backend", SIMULATED]) == 0
    assert adding_problem.main(["--length", "4", "--train", "32", "--val", "16", "--epochs", "1", "--hidden", "3",
                                "--batch-size", "32", "--probe", "8", "--cells", "gru", "--no-plot", "--quiet",
                                "--backend", SIMULATED]) == 0
    assert "gru: val MSE" in capsys.readouterr().out
