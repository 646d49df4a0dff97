"""Compiled training steps (``Trainer(compile=True)``, ``backprop train --compile``): the same weights as the
eager step, on the CPU, for JAX (``jax.jit``) and PyTorch (``torch.compile``, Inductor's C++ kernels)."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backends import get_backend
from backprop.cli import main
from backprop.data import load_digits
from backprop.training import Trainer
from backprop.training.step import MicroBatch, TrainingStep

from conftest import assert_on_backend, weights


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _backend_or_skip(spec):
    from backends import BackendUnavailable

    try:
        return get_backend(spec)
    except BackendUnavailable as exc:
        pytest.skip(f"{spec}: {exc.reason}")


# Fused operations round differently from the same operations one at a time (XLA fuses the optimizer's and the
# loss's elementwise work into a few loops; Inductor too), so after a few steps the weights agree to about one
# float32 rounding step per step, not bit for bit: measured 1e-7 after 12 steps.
RTOL, ATOL = 1e-5, 1e-6


def test_a_jit_compiled_step_gives_the_eager_weights_and_resumes_exactly(digits, tmp_path):
    backend = _backend_or_skip("jax:cpu")

    def trainer_for(compile, epochs=2):
        model = bp.Sequential([bp.Dense(64, 16, rng=1, backend=backend), bp.ReLU(backend=backend),
                               bp.layers.Dropout(0.2, backend=backend), bp.Dense(16, 10, rng=2, backend=backend)])
        return Trainer(model, optimizer="adam", lr=0.01, epochs=epochs, batch_size=32, clip_norm=1.0, seed=3,
                       schedule="cosine", grad_norm_samples=2, progress=False, log=None, compile=compile)

    def run(compile):
        trainer = trainer_for(compile)
        return trainer, trainer.fit(digits.x_train[:96], digits.y_train[:96])

    eager, eager_history = run(False)
    compiled, history = run(True)
    # a compiled run stopped after its first epoch and resumed from the checkpoint ends bit for bit where the
    # uninterrupted compiled run did (the device's step count is set from the checkpoint's)
    first = trainer_for(True)
    first.epochs = 1
    first.fit(digits.x_train[:96], digits.y_train[:96])
    first.save_checkpoint(tmp_path / "checkpoint.safetensors")
    resumed = trainer_for(True)
    resumed.load_checkpoint(tmp_path / "checkpoint.safetensors")
    resumed.fit(digits.x_train[:96], digits.y_train[:96])
    for name, weight in weights(compiled.model).items():
        np.testing.assert_array_equal(backend.to_host(weights(resumed.model)[name]), backend.to_host(weight), name)
    for name, weight in weights(eager.model).items():
        got = weights(compiled.model)[name]
        assert_on_backend(got, backend)
        np.testing.assert_allclose(backend.to_host(got), backend.to_host(weight), rtol=RTOL, atol=ATOL, err_msg=name)
    for have, want in zip(history, eager_history, strict=True):
        assert have["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert have["train_accuracy"] == want["train_accuracy"]
        assert have["grad_norms"] == pytest.approx(want["grad_norms"], rel=1e-4)
        assert have["lr"] == want["lr"]
    # the host's bookkeeping is the eager step's: a checkpoint of either resumes the other
    (_, info), (_, eager_info) = compiled.optimizer.state_dict(), eager.optimizer.state_dict()
    assert info == eager_info and info["step"] == 6
    arrays, eager_arrays = compiled.optimizer.state_dict()[0], eager.optimizer.state_dict()[0]
    assert sorted(arrays) == sorted(eager_arrays)
    for key, array in eager_arrays.items():
        np.testing.assert_allclose(backend.to_host(arrays[key]), backend.to_host(array), rtol=RTOL, atol=ATOL)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # Inductor's own
def test_a_torch_compiled_step_gives_the_eager_weights():
    """torch.compile with Inductor, which writes and builds C++ kernels on the CPU (a C++ compiler is needed): one
    tiny model, three steps (compiling takes seconds; Inductor's cache makes later runs cheaper)."""
    pytest.importorskip("torch")
    backend = _backend_or_skip("torch:cpu")
    host = np.random.default_rng(0)
    x, y = backend.from_host(host.random((16, 8), dtype=np.float32)), backend.from_host(host.integers(0, 3, 16))

    def run(compile):
        model = bp.mlp([8, 4, 3], seed=1, backend=backend)
        step = TrainingStep(model, bp.CrossEntropy(), bp.optim.Adam(model, lr=0.01), clip_norm=1.0)
        if compile:
            from backprop.training.compiled import compiled_step

            step = compiled_step(step, True)
        metrics = step.new_metrics()
        for _ in range(3):
            metrics, _ = step.run([MicroBatch(x, y, 1.0)], metrics)
        return model, backend.to_host(metrics)

    (eager, eager_metrics), (compiled, metrics) = run(False), run(True)
    np.testing.assert_allclose(metrics, eager_metrics, rtol=1e-6)
    for name, weight in weights(eager).items():
        np.testing.assert_allclose(backend.to_host(weights(compiled)[name]), backend.to_host(weight), rtol=RTOL,
                                   atol=ATOL, err_msg=name)


@pytest.mark.parametrize("spec", ["numpy", "array_api_strict"])
def test_a_backend_without_a_compiler_says_so_in_one_line(spec):
    model = bp.mlp([4, 3], seed=0, backend=spec)
    with pytest.raises(bp.ConfigError, match=r"^compile: backend \S+ has no step compiler .*jax \(jit\), torch "
                                             r"\(torch.compile\), cupy \(cuda-graph\)$"):
        Trainer(model, compile=True, progress=False, log=None)
    with pytest.raises(bp.ConfigError, match=r"^compile: backend \S+ has no step compiler"):
        Trainer(model, compile="jit", progress=False, log=None)


def test_the_cli_refuses_compile_on_numpy_before_training(tmp_path, capsys):
    status = main(["train", "--backend", "numpy", "--compile", "--epochs", "1", "--hidden", "4", "--no-plots",
                   "--no-progress", "--output", str(tmp_path / "run")])
    assert status == 2
    assert capsys.readouterr().err.strip().startswith("error: compile: backend numpy has no step compiler")
    assert not (tmp_path / "run").exists()


def test_a_captured_cuda_graph_step_gives_the_eager_weights(digits):
    """CuPy's CUDA Graph capture (backprop/training/captured.py), with dropout (the counter-based generator),
    Adam (device scalars), clipping and a short last batch (its own graph). Needs a GPU: the GPU check
    (benchmarks/gpu_check.sh) runs it; skipped here without one."""
    backend = _backend_or_skip("cupy:0")

    def run(compile):
        model = bp.Sequential([bp.Dense(64, 16, rng=1, backend=backend), bp.ReLU(backend=backend),
                               bp.layers.Dropout(0.2, backend=backend), bp.Dense(16, 10, rng=2, backend=backend)])
        trainer = Trainer(model, optimizer="adam", lr=0.01, epochs=2, batch_size=32, clip_norm=1.0, seed=3,
                          progress=False, log=None, compile=compile)
        return trainer, trainer.fit(digits.x_train[:100], digits.y_train[:100])

    (eager, eager_history), (captured, history) = run(False), run(True)
    for name, weight in weights(eager.model).items():
        np.testing.assert_allclose(backend.to_host(weights(captured.model)[name]), backend.to_host(weight),
                                   rtol=RTOL, atol=ATOL, err_msg=name)
    for have, want in zip(history, eager_history, strict=True):
        assert have["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert have["grad_norms"] == pytest.approx(want["grad_norms"], rel=1e-4)
    assert captured.optimizer.state_dict()[1] == eager.optimizer.state_dict()[1]


def test_a_captured_step_reaches_cupy_through_the_backends_public_module():
    """``CapturedStep`` takes CuPy's streams and memory pools from ``backend.cupy`` (``CupyBackend.cupy``, the
    module the backend runs on), not from a private handle; a backend without one is refused in one line.
    Runs without a GPU: the module is a stand-in that records what the step asks of it."""
    import contextlib
    import types

    from backends.cupy_backend import CupyBackend
    from backprop.errors import ConfigError
    from backprop.training.captured import CapturedStep

    made = []

    class Stream:
        def __init__(self, **options):
            made.append(("stream", options))

        def begin_capture(self):  # pragma: no cover - only its presence is checked
            pass

    class MemoryPool:
        def __init__(self):
            made.append(("pool", {}))

    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Graph=object, Stream=Stream, MemoryPool=MemoryPool))
    backend = types.SimpleNamespace(name="fake-cupy", cupy=fake_cupy, activate=contextlib.nullcontext)
    step = types.SimpleNamespace(backend=backend, optimizer=None)
    captured = CapturedStep(step)  # a stand-in step: only its backend and optimizer are read
    assert captured._cupy is fake_cupy
    assert made == [("stream", {"non_blocking": True}), ("pool", {})]

    with pytest.raises(ConfigError, match=r"compile: CUDA Graph capture needs CuPy >= 13 .*backend numpy"):
        CapturedStep(types.SimpleNamespace(backend=get_backend("numpy"), optimizer=None))

    # CupyBackend.cupy is the module it was made with (built here without a GPU, its constructor skipped)
    cupy_backend = CupyBackend.__new__(CupyBackend)
    cupy_backend._cupy = fake_cupy
    assert cupy_backend.cupy is fake_cupy
