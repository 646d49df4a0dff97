"""Optimizers against torch.optim as the oracle, their state and checkpoints, schedules and gradient clipping."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import backprop as bp
from backprop.optim import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    AdamW,
    Constant,
    Cosine,
    ExponentialDecay,
    RMSprop,
    StepDecay,
    WarmUp,
    clip_grad_norm,
    global_grad_norm,
    make_optimizer,
    make_schedule,
    schedule_from_config,
)

from conftest import UPDATES_IN_PLACE, assert_on_backend

# (optimizer name, our hyperparameters, torch.optim class, torch hyperparameters)
ORACLE_CASES = {
    "sgd": ("sgd", {"lr": 0.1}, "SGD", {"lr": 0.1}),
    "sgd-momentum-wd": ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
                        "SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    "nesterov": ("nesterov", {"lr": 0.1, "weight_decay": 0.01},
                 "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    "adam": ("adam", {"lr": 0.01}, "Adam", {"lr": 0.01}),
    "adam-l2": ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
                "Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    "adamw": ("adamw", {"lr": 0.01, "weight_decay": 0.1}, "AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    "rmsprop": ("rmsprop", {"lr": 0.01}, "RMSprop", {"lr": 0.01}),
    "rmsprop-momentum-wd": ("rmsprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "weight_decay": 0.01},
                            "RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "weight_decay": 0.01}),
    "adagrad": ("adagrad", {"lr": 0.1}, "Adagrad", {"lr": 0.1}),
    "adagrad-init-wd": ("adagrad", {"lr": 0.1, "eps": 1e-8, "weight_decay": 0.01, "initial_accumulator_value": 0.1},
                        "Adagrad", {"lr": 0.1, "eps": 1e-8, "weight_decay": 0.01, "initial_accumulator_value": 0.1}),
}

STEPS = 5


def _model(backend, dtype=None, sizes=(4, 5, 3)):
    return bp.mlp(list(sizes), seed=0, backend=backend, dtype=dtype)


def _host_grads(model, steps, seed=7):
    """Gradients for each step: {name: array} in the model's parameter order, drawn on the host."""
    rng = np.random.default_rng(seed)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters().items()}
    return [{name: rng.normal(scale=0.5, size=shape).astype(np.float32) for name, shape in shapes.items()}
            for _ in range(steps)]


def _set_grads(model, grads):
    backend = model.backend
    for name, param in model.named_parameters().items():
        # a copy: from_host may share memory with the host array, and clipping scales gradients in place
        param.grad = backend.from_host(np.array(grads[name], copy=True), dtype=param.dtype)


def _host_weights(model):
    return {name: np.array(model.backend.to_host(p.value), copy=True) for name, p in model.named_parameters().items()}


# A weight of 200 x 180 is past the size where the NumPy backend's update runs as SciPy's BLAS axpy.
@pytest.mark.parametrize("case, sizes", [(case, (4, 5, 3)) for case in ORACLE_CASES]
                         + [("sgd", (200, 180, 3)), ("sgd-momentum-wd", (200, 180, 3))],
                         ids=list(ORACLE_CASES) + ["sgd-large", "sgd-momentum-wd-large"])
def test_matches_torch_optim(backend, case, sizes):
    torch = pytest.importorskip("torch")
    name, ours, torch_class, theirs = ORACLE_CASES[case]
    model = _model(backend, sizes=sizes)
    params = model.named_parameters()
    reference = {k: torch.tensor(w, dtype=torch.float64, requires_grad=True) for k, w in _host_weights(model).items()}
    optimizer = make_optimizer(name, model, **ours)
    oracle = getattr(torch.optim, torch_class)(list(reference.values()), **theirs)
    for step, grads in enumerate(_host_grads(model, STEPS)):
        _set_grads(model, grads)
        for k, p in reference.items():
            p.grad = torch.tensor(grads[k], dtype=torch.float64)
        optimizer.step()
        oracle.step()
        if step == 0:  # the first step may move the weights into one flat buffer (NumPy); then they stay there
            identities = {k: id(v.value) for k, v in params.items()}

    weights = {k: v.value for k, v in model.named_parameters().items()}
    arrays, info = optimizer.state_dict()
    for k, p in reference.items():
        if backend.library in UPDATES_IN_PLACE:  # the fast path: no new arrays, one pass per update
            assert id(weights[k]) == identities[k], f"{k} was replaced, not updated in place"
        assert_on_backend(weights[k], backend, shape=p.shape)
        np.testing.assert_allclose(backend.to_host(weights[k]), p.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{case}: {k}")
        for buffer, expected in oracle.state[p].items():
            if buffer == "step":
                assert info["param_steps"][k] == STEPS
                continue
            ours_buffer = arrays[f"{k}.{buffer}"]
            assert_on_backend(ours_buffer, backend, shape=p.shape)
            np.testing.assert_allclose(backend.to_host(ours_buffer), expected.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{case}: {k}.{buffer}")
    assert sorted(arrays) == sorted(f"{k}.{b}" for k in reference for b in oracle.state[reference[k]] if b != "step")
    for param in model.parameters():
        assert_on_backend(param.grad, backend, shape=param.shape)


def test_float64_model_keeps_float64_state(backend):
    if not backend.supports_float64:
        pytest.skip(f"{backend.name} has no float64")
    model = _model(backend, dtype="float64")
    optimizer = Adam(model, lr=0.01)
    _set_grads(model, _host_grads(model, 1)[0])
    optimizer.step()
    for array in [*(p.value for p in model.parameters()), *optimizer.state_dict()[0].values()]:
        assert_on_backend(array, backend, "float64")


@pytest.mark.parametrize("name, hyperparameters", [
    ("momentum", {"lr": 0.1, "weight_decay": 0.01}),
    ("adam", {"lr": 0.01}),
    ("adamw", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5}),
    ("adagrad", {"lr": 0.1, "initial_accumulator_value": 0.1}),
])
def test_state_dict_round_trip_resumes_exactly(backend, name, hyperparameters):
    model = _model(backend)
    grads = _host_grads(model, 5)
    optimizer = make_optimizer(name, model, **hyperparameters)
    for g in grads[:3]:
        _set_grads(model, g)
        optimizer.step()
    arrays, info = optimizer.state_dict()
    info = json.loads(json.dumps(info))  # it is JSON-able and survives the trip
    saved_weights, config = _host_weights(model), json.loads(json.dumps(optimizer.config()))
    for g in grads[3:]:
        _set_grads(model, g)
        optimizer.step()

    resumed = _model(backend)
    resumed.replace_arrays({f"param/{k}": backend.from_host(w) for k, w in saved_weights.items()})
    fresh = make_optimizer(params=resumed, **config)
    fresh.load_state_dict(arrays, info)
    assert fresh.step_count == 3 and fresh.config() == optimizer.config()
    for g in grads[3:]:
        _set_grads(resumed, g)
        fresh.step()
    for k, w in _host_weights(model).items():
        np.testing.assert_array_equal(backend.to_host(resumed.named_parameters()[k].value), w, err_msg=k)
    # state_dict returned copies: the later steps did not change the saved arrays
    assert any(not np.array_equal(backend.to_host(a), backend.to_host(optimizer.state_dict()[0][k]))
               for k, a in arrays.items())


def test_load_state_dict_restores_hyperparameters_and_validates(backend):
    model = _model(backend)
    optimizer = Adam(model, lr=0.01, betas=(0.8, 0.9))
    _set_grads(model, _host_grads(model, 1)[0])
    optimizer.step()
    arrays, info = optimizer.state_dict()
    other = Adam(_model(backend), lr=0.5)
    other.load_state_dict(arrays, info)
    assert other.lr == 0.01 and other.betas == (0.8, 0.9) and other.param_steps == optimizer.param_steps

    target = Adam(_model(backend), lr=0.5)
    with pytest.raises(bp.ConfigError, match=r"missing array\(s\) 0\.weight\.exp_avg$"):
        target.load_state_dict({k: v for k, v in arrays.items() if k != "0.weight.exp_avg"}, info)
    assert target.lr == 0.5 and target.betas == (0.9, 0.999) and not target.state  # nothing changed
    with pytest.raises(bp.ConfigError, match=r"unexpected array\(s\) in the saved state: 9\.weight\.exp_avg"):
        target.load_state_dict({**arrays, "9.weight.exp_avg": arrays["0.weight.exp_avg"]}, info)
    with pytest.raises(bp.ConfigError, match=r"saved array 0\.bias\.exp_avg has shape \(4, 5\), but the parameter "
                                             r"has shape \(5,\)"):
        target.load_state_dict({**arrays, "0.bias.exp_avg": arrays["0.weight.exp_avg"]}, info)
    with pytest.raises(bp.ConfigError, match=r"names parameter\(s\) the model lacks: 7\.weight"):
        target.load_state_dict(arrays, {**info, "param_steps": {**info["param_steps"], "7.weight": 1}})
    with pytest.raises(bp.ConfigError, match=r"the saved state is for optimizer 'adam', not 'sgd'"):
        SGD(_model(backend), lr=0.1).load_state_dict(arrays, info)
    with pytest.raises(bp.ConfigError, match=r"betas\[1\] must be a finite number in \[0, 1\), got 1\.5"):
        target.load_state_dict(arrays, {**info, "hyperparameters": {**info["hyperparameters"], "betas": [0.9, 1.5]}})
    assert target.lr == 0.5 and not target.state


CORES = {  # name -> (core, hyperparameters, number of state lists it takes and returns)
    "sgd": (bp.optim.sgd, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, 1),
    "adam": (bp.optim.adam, {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1}, 2),
    "adamw": (bp.optim.adamw, {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1}, 2),
    "rmsprop": (bp.optim.rmsprop, {"lr": 0.01, "alpha": 0.9, "eps": 1e-8, "momentum": 0.5}, 2),
    "adagrad": (bp.optim.adagrad, {"lr": 0.1, "eps": 1e-10}, 1),
}


@pytest.mark.parametrize("name", CORES)
def test_functional_cores_return_their_results(backend, name):
    """Without a backend a core makes new arrays and leaves its inputs alone (right for immutable arrays);
    with one it runs the backend's updates (in place on NumPy and PyTorch): the results are the same."""
    core, hyperparameters, state_lists = CORES[name]
    host = np.random.default_rng(3)
    shapes = [(3, 4), (4,)]
    params_host = [host.normal(size=shape).astype(np.float32) for shape in shapes]
    grads_host = [host.normal(size=shape).astype(np.float32) for shape in shapes]
    states_host = [[np.abs(host.normal(size=shape)).astype(np.float32) for shape in shapes]
                   for _ in range(state_lists)]
    steps = [[1, 1]] if name in ("adam", "adamw") else []

    def run(with_backend):
        def arrays(host_arrays):
            return [backend.from_host(a) for a in host_arrays]

        params, grads, states = arrays(params_host), arrays(grads_host), [arrays(s) for s in states_host]
        with backend.activate():  # a core without a backend is array code of our own: on the backend's device
            results = core(params, grads, *states, *steps, **hyperparameters,
                           backend=backend if with_backend else None)
        if not with_backend:  # nothing passed in changed
            for given, expected in zip([*params, *grads, *sum(states, [])],
                                       [*params_host, *grads_host, *sum(states_host, [])]):
                np.testing.assert_array_equal(backend.to_host(given), expected)
        return results

    portable, with_backend = run(False), run(True)
    assert len(portable) == len(with_backend) == 1 + state_lists
    for ours, theirs in zip(sum(map(list, portable), []), sum(map(list, with_backend), [])):
        assert_on_backend(ours, backend)
        np.testing.assert_allclose(backend.to_host(ours), backend.to_host(theirs), rtol=1e-6, atol=1e-7)
    for new, old in zip(portable[0], params_host):
        assert not np.array_equal(backend.to_host(new), old)  # the parameters did move


def test_parameters_without_gradients_are_skipped(backend):
    model = _model(backend)
    optimizer = Adam(model, lr=0.01)
    before = _host_weights(model)
    _set_grads(model, _host_grads(model, 1)[0])
    model[0].params["bias"].grad = None
    optimizer.step()
    after = _host_weights(model)
    np.testing.assert_array_equal(after["0.bias"], before["0.bias"])
    assert not np.array_equal(after["0.weight"], before["0.weight"])
    arrays, info = optimizer.state_dict()
    assert "0.bias" not in info["param_steps"] and "0.bias.exp_avg" not in arrays
    optimizer.zero_grad()
    optimizer.step()  # no gradients at all: nothing to do
    np.testing.assert_array_equal(_host_weights(model)["0.weight"], after["0.weight"])


def test_lr_is_settable_and_checked(backend):
    model = _model(backend)
    optimizer = SGD(model, lr=0.1)
    grads = _host_grads(model, 1)[0]
    before = _host_weights(model)
    optimizer.lr = 0.0  # a schedule may reach 0: the step changes nothing
    _set_grads(model, grads)
    optimizer.step()
    np.testing.assert_array_equal(_host_weights(model)["0.weight"], before["0.weight"])
    optimizer.lr = 0.5
    optimizer.step()
    np.testing.assert_allclose(_host_weights(model)["0.weight"], before["0.weight"] - 0.5 * grads["0.weight"],
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(bp.ConfigError, match="SGD: learning rate must be a non-negative finite number, got -1"):
        optimizer.lr = -1
    assert optimizer.lr == 0.5


def test_training_with_adam_and_clipping_reduces_the_loss(backend):
    rng = np.random.default_rng(3)
    host_x = rng.normal(size=(32, 4)).astype(np.float32)
    x, y = backend.from_host(host_x), backend.from_host((host_x[:, 0] > 0).astype(np.int64))
    model = _model(backend)
    loss_fn, optimizer = bp.CrossEntropy(), Adam(model, lr=0.05)
    schedule = make_schedule("cosine", epochs=20, warmup_epochs=2)
    losses = []
    for epoch in range(20):
        optimizer.lr = schedule(epoch, 0.05)
        optimizer.zero_grad()
        logits, backprop = model.begin_update(x, training=True)
        loss, grad = loss_fn.value_and_grad(logits, y)
        backprop(grad)
        assert_on_backend(clip_grad_norm(model, 1.0), backend, shape=())
        optimizer.step()
        losses.append(float(backend.to_host(loss)))
    assert losses[-1] < 0.5 * losses[0]


# -- gradient clipping ---------------------------------------------------------

def test_clip_grad_norm_matches_numpy(backend):
    model = _model(backend)
    grads = _host_grads(model, 1)[0]
    expected_norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    _set_grads(model, grads)
    norm = global_grad_norm(model)
    assert_on_backend(norm, backend, shape=())
    np.testing.assert_allclose(float(backend.to_host(norm)), expected_norm, rtol=1e-6)

    identities = [id(param.grad) for param in model.parameters()]
    max_norm = expected_norm / 4
    norm = clip_grad_norm(model, max_norm)
    assert_on_backend(norm, backend, shape=())
    np.testing.assert_allclose(float(backend.to_host(norm)), expected_norm, rtol=1e-6)  # the norm before
    scale = max_norm / (expected_norm + 1e-6)
    for name, param in model.named_parameters().items():
        if backend.library in UPDATES_IN_PLACE:
            assert id(param.grad) == identities[0]  # scaled in place: the fast path
        identities.pop(0)
        assert_on_backend(param.grad, backend, shape=grads[name].shape)
        np.testing.assert_allclose(backend.to_host(param.grad), grads[name] * scale, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(backend.to_host(global_grad_norm(model))), max_norm, rtol=1e-5)


def test_clip_grad_norm_leaves_small_gradients_alone(backend):
    model = _model(backend)
    grads = _host_grads(model, 1)[0]
    _set_grads(model, grads)
    norm = clip_grad_norm(model, 1e6)
    for name, param in model.named_parameters().items():
        np.testing.assert_array_equal(backend.to_host(param.grad), grads[name])
    assert float(backend.to_host(norm)) > 0
    empty = _model(backend)
    assert float(backend.to_host(clip_grad_norm(empty, 1.0))) == 0.0  # no gradients yet


def test_clip_grad_norm_agrees_with_torch():
    torch = pytest.importorskip("torch")
    model = _model("numpy")
    grads = _host_grads(model, 1)[0]
    _set_grads(model, grads)
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g, dtype=torch.float64)
    expected = torch.nn.utils.clip_grad_norm_(tensors, 0.5)
    norm = clip_grad_norm(model, 0.5)
    np.testing.assert_allclose(float(norm), float(expected), rtol=1e-6)
    for param, t in zip(model.parameters(), tensors):
        np.testing.assert_allclose(param.grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


# -- schedules -------------------------------------------------------------------

def test_schedule_values():
    assert [Constant()(e, 0.1) for e in (0, 7)] == [0.1, 0.1]
    assert [StepDecay(2, 0.5)(e, 0.1) for e in range(5)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    assert [ExponentialDecay(0.9)(e, 0.1) for e in (0, 1, 2)] == pytest.approx([0.1, 0.09, 0.081])
    cosine = Cosine(10, min_lr=0.01)
    assert cosine(0, 0.1) == pytest.approx(0.1)
    assert cosine(5, 0.1) == pytest.approx(0.055)  # halfway: the mean of base and min
    assert cosine(10, 0.1) == pytest.approx(0.01) and cosine(25, 0.1) == pytest.approx(0.01)
    assert Cosine(4)(1, 1.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    warm = WarmUp(4, StepDecay(1, 0.5))
    assert [warm(e, 0.2) for e in range(7)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.1, 0.05])
    assert WarmUp(2)(5, 0.3) == 0.3


def test_make_schedule_and_config_round_trip():
    schedule = make_schedule("cosine", epochs=10, warmup_epochs=2)
    assert isinstance(schedule, WarmUp) and schedule.then == Cosine(8)
    assert [schedule(e, 1.0) for e in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    assert make_schedule("step", epochs=9) == StepDecay(3, 0.1)
    assert make_schedule("step", epochs=9, step_size=2, gamma=0.5) == StepDecay(2, 0.5)
    assert make_schedule("exponential", epochs=5, gamma=0.8) == ExponentialDecay(0.8)
    assert make_schedule("Constant", epochs=1) == Constant()
    for s in (schedule, StepDecay(2, 0.5), Constant(), ExponentialDecay(0.5), WarmUp(3, Cosine(5, 0.1))):
        assert schedule_from_config(json.loads(json.dumps(s.config()))) == s


def test_schedules_match_torch_lr_schedulers():
    torch = pytest.importorskip("torch")
    pairs = [(StepDecay(3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
             (ExponentialDecay(0.9), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)),
             (Cosine(6, 0.001), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 6, 0.001))]
    for ours, make in pairs:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        scheduler = make(opt)
        for epoch in range(7):
            assert ours(epoch, 0.1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), (ours, epoch)
            opt.step()
            scheduler.step()


# -- bad hyperparameters -----------------------------------------------------------

def _m():
    return bp.mlp([2, 2], backend="numpy")


@pytest.mark.parametrize("bad, message", [
    (lambda: SGD(_m(), lr=-0.1), r"^SGD: learning rate must be a positive finite number, got -0\.1$"),
    (lambda: Adam(_m(), lr=0), r"^Adam: learning rate must be a positive finite number, got 0$"),
    (lambda: SGD(_m(), lr=0.1, momentum=-0.5), r"^SGD: momentum must be a finite number in \[0, 1\), got -0\.5$"),
    (lambda: SGD(_m(), lr=0.1, nesterov=True), r"^SGD: nesterov=True needs a momentum > 0$"),
    (lambda: SGD(_m(), lr=0.1, weight_decay=float("inf")), r"^SGD: weight_decay must be a finite number >= 0"),
    (lambda: Adam(_m(), betas=(0.9, 1.0)), r"^Adam: betas\[1\] must be a finite number in \[0, 1\), got 1\.0$"),
    (lambda: AdamW(_m(), betas=(-0.1, 0.9)), r"^AdamW: betas\[0\] must be a finite number in \[0, 1\), got -0\.1$"),
    (lambda: Adam(_m(), betas=0.9), r"^Adam: betas must be a pair of numbers in \[0, 1\), got 0\.9$"),
    (lambda: Adam(_m(), eps=0.0), r"^Adam: eps must be a finite number > 0, got 0\.0$"),
    (lambda: RMSprop(_m(), eps=-1e-8), r"^RMSprop: eps must be a finite number > 0"),
    (lambda: RMSprop(_m(), alpha=1.0), r"^RMSprop: alpha must be a finite number in \[0, 1\)"),
    (lambda: AdaGrad(_m(), initial_accumulator_value=-1), r"^AdaGrad: initial_accumulator_value must be"),
    (lambda: make_optimizer("lbfgs", _m()), r"^unknown optimizer 'lbfgs'; expected one of sgd, momentum, nesterov, "
                                            r"adam, adamw, rmsprop, adagrad$"),
    (lambda: make_optimizer("adam", _m(), momentum=0.9), r"^optimizer 'adam': unknown hyperparameter\(s\) momentum; "
                                                         r"expected lr, betas, eps, weight_decay$"),
    (lambda: make_optimizer("sgd", _m(), lr="fast"), r"^SGD: learning rate must be a positive finite number"),
    (lambda: clip_grad_norm(_m(), 0), r"^clip_grad_norm: max_norm must be a finite number > 0, got 0$"),
    (lambda: StepDecay(0), r"^StepDecay: step_size must be a positive integer, got 0$"),
    (lambda: StepDecay(2, gamma=1.5), r"^StepDecay: gamma must be a finite number in \(0, 1\], got 1\.5$"),
    (lambda: ExponentialDecay(0.0), r"^ExponentialDecay: gamma must be a finite number in \(0, 1\]"),
    (lambda: Cosine(10, min_lr=-0.1), r"^Cosine: min_lr must be a finite number >= 0"),
    (lambda: WarmUp(0), r"^WarmUp: epochs must be a positive integer, got 0$"),
    (lambda: WarmUp(2, then="cosine"), r"^WarmUp: then must be a Schedule, got str$"),
    (lambda: Constant()(-1, 0.1), r"^Constant: epoch must be a non-negative integer, got -1$"),
    (lambda: make_schedule("linear", epochs=5), r"^unknown learning-rate schedule 'linear'; expected one of constant, "
                                                r"step, exponential, cosine$"),
    (lambda: make_schedule("cosine", epochs=5, warmup_epochs=5), r"^make_schedule: warmup_epochs must be less than "
                                                                 r"epochs \(5\), got 5$"),
    (lambda: make_schedule("cosine", epochs=0), r"^make_schedule: epochs must be a positive integer, got 0$"),
    (lambda: make_schedule("step", epochs=5, gama=0.5), r"^schedule 'step': unknown option\(s\) gama; "
                                                        r"expected step_size, gamma$"),
    (lambda: make_schedule("constant", epochs=5, gamma=0.5), r"unknown option\(s\) gamma; expected none$"),
])
def test_bad_hyperparameters(bad, message):
    with pytest.raises(bp.ConfigError, match=message) as info:
        bad()
    assert "\n" not in str(info.value)


def test_every_named_optimizer_builds_and_rebuilds_from_config():
    model = _m()
    for name in OPTIMIZERS:
        optimizer = make_optimizer(name, model)
        assert make_optimizer(params=model, **json.loads(json.dumps(optimizer.config()))).config() == optimizer.config()
    assert make_optimizer("momentum", model).momentum == 0.9
    assert make_optimizer("nesterov", model, momentum=0.5).nesterov


# -- the parameter store and parameter groups ------------------------------------------

def _groups(model, **first):
    """Two groups: the first layer's parameters (with ``first``'s hyperparameters) and the rest."""
    named = model.named_parameters()
    return [{"params": {k: v for k, v in named.items() if k.startswith("0.")}, **first},
            {"params": {k: v for k, v in named.items() if not k.startswith("0.")}}]


@pytest.mark.parametrize("name, defaults, first", [
    ("adam", {"lr": 0.01}, {"lr": 0.05, "weight_decay": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}, {"lr": 0.02, "momentum": 0.0}),
    ("adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5}, {"lr": 0.3, "weight_decay": 0.01}),
])
def test_parameter_groups_match_torch_param_groups(backend, name, defaults, first):
    torch = pytest.importorskip("torch")
    model = _model(backend)
    reference = {k: torch.tensor(w, dtype=torch.float64, requires_grad=True) for k, w in _host_weights(model).items()}
    optimizer = make_optimizer(name, _groups(model, **first), **defaults)
    torch_class = {"adam": "Adam", "sgd": "SGD", "adagrad": "Adagrad"}[name]
    oracle = getattr(torch.optim, torch_class)(
        [{"params": [p for k, p in reference.items() if k.startswith("0.")], **first},
         {"params": [p for k, p in reference.items() if not k.startswith("0.")]}], **defaults)
    assert [g["names"] for g in optimizer.param_groups] == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    for grads in _host_grads(model, STEPS):
        _set_grads(model, grads)
        for k, p in reference.items():
            p.grad = torch.tensor(grads[k], dtype=torch.float64)
        optimizer.step()
        oracle.step()
    for k, w in _host_weights(model).items():
        np.testing.assert_allclose(w, reference[k].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
        assert_on_backend(model.named_parameters()[k].value, backend)


def test_setting_lr_keeps_each_groups_share_and_groups_survive_a_checkpoint(backend):
    model = _model(backend)
    optimizer = Adam(_groups(model, lr=0.05), lr=0.01)
    optimizer.lr = 0.02  # what a schedule does: every group moves in proportion
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.02])
    grads = _host_grads(model, 4)
    for g in grads[:2]:
        _set_grads(model, g)
        optimizer.step()
    arrays, info = optimizer.state_dict()
    info = json.loads(json.dumps(info))
    assert [g["lr"] for g in info["param_groups"]] == pytest.approx([0.1, 0.02])
    saved = _host_weights(model)
    for g in grads[2:]:
        _set_grads(model, g)
        optimizer.step()

    resumed = _model(backend)
    resumed.replace_arrays({f"param/{k}": backend.from_host(w) for k, w in saved.items()})
    fresh = Adam(_groups(resumed, lr=0.5), lr=0.3)  # other rates: the checkpoint's are restored
    fresh.load_state_dict(arrays, info)
    assert fresh.lr == pytest.approx(0.02) and [g["lr"] for g in fresh.param_groups] == pytest.approx([0.1, 0.02])
    for g in grads[2:]:
        _set_grads(resumed, g)
        fresh.step()
    for k, w in _host_weights(model).items():
        np.testing.assert_array_equal(_host_weights(resumed)[k], w, err_msg=k)

    one_group = Adam(_model(backend), lr=0.01)
    with pytest.raises(bp.ConfigError, match=r"the saved state has 2 parameter groups, this optimizer 1"):
        one_group.load_state_dict(arrays, info)
    swapped = Adam(list(reversed(_groups(_model(backend), lr=0.05))), lr=0.01)
    with pytest.raises(bp.ConfigError, match=r"parameter group 0 of the saved state does not hold the parameters "
                                             r"of this optimizer's group 0 \(2\.weight, 2\.bias\)"):
        swapped.load_state_dict(arrays, info)
    assert swapped.lr == 0.01 and not swapped.state  # nothing changed


def test_a_checkpoint_of_one_group_has_no_group_entry_and_loads_as_before(backend):
    """A plain optimizer's saved state is what it was before groups existed, so older checkpoints load."""
    model = _model(backend)
    optimizer = SGD(model, lr=0.1, momentum=0.9)
    _set_grads(model, _host_grads(model, 1)[0])
    optimizer.step()
    arrays, info = optimizer.state_dict()
    assert set(info) == {"name", "hyperparameters", "step", "param_steps"}
    other = SGD(_model(backend), lr=0.3)
    other.load_state_dict(arrays, info)
    assert other.param_groups[0]["lr"] == 0.1 and other.param_groups[0]["momentum"] == 0.9


def test_optimizers_take_the_store_in_every_form(backend):
    model = _model(backend)
    boxes = model.parameters()
    assert [b is p for b, p in zip(boxes, model.named_parameters().values())] == [True] * 4
    by_position = SGD(boxes, lr=0.1)
    assert by_position.names == ["0", "1", "2", "3"] and by_position.backend is backend
    assert SGD(model.named_parameters(), lr=0.1).names == list(model.named_parameters())
    grads = _host_grads(model, 1)[0]
    before = _host_weights(model)
    _set_grads(model, grads)
    by_position.step()
    np.testing.assert_allclose(_host_weights(model)["0.weight"], before["0.weight"] - 0.1 * grads["0.weight"],
                               rtol=1e-6, atol=1e-7)
    by_position.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad, message", [
    (lambda m: SGD([{"params": m}, {"params": m[0]}], lr=0.1),
     r"^SGD: parameter 'weight' is already in a parameter group \(as '0\.weight'\); each parameter may be in one "
     r"group only$"),
    (lambda m: SGD([{"params": m, "momentun": 0.9}], lr=0.1),
     r"^SGD: unknown hyperparameter\(s\) momentun in a parameter group; expected lr, momentum, nesterov, "
     r"weight_decay$"),
    (lambda m: SGD([{"params": m, "lr": -1}], lr=0.1), r"^SGD: learning rate must be a positive finite number"),
    (lambda m: Adam([{"params": m[0], "betas": (0.9, 2)}, {"params": m[2]}], lr=0.1),
     r"^Adam: betas\[1\] must be a finite number in \[0, 1\), got 2$"),
    (lambda m: SGD([m[0].params["weight"].value], lr=0.1),
     r"^SGD: '0' is a .*, not a Parameter \(optimizers take model\.parameters\(\) or model\.named_parameters\(\), "
     r"not arrays\)$"),
    (lambda m: SGD([{"params": m[0]}, {"params": m[2]}], lr=0.1),
     r"^SGD: two parameters are named 'weight'; give each group's parameters distinct names$"),
    (lambda m: SGD([{"weights": m}], lr=0.1), r"^SGD: a parameter group is a dict with a 'params' entry"),
])
def test_bad_parameter_groups(bad, message):
    with pytest.raises(bp.ConfigError, match=message):
        bad(bp.mlp([2, 3, 2], backend="numpy"))


def test_an_optimizer_refuses_parameters_of_two_backends():
    pytest.importorskip("array_api_strict")
    numpy_model, strict_model = bp.mlp([2, 2], backend="numpy"), bp.mlp([2, 2], backend="array_api_strict")
    with pytest.raises(bp.DeviceMismatchError, match=r"^SGD: a parameter group lives on backend array_api_strict, "
                                                     r"the other parameters on numpy; one optimizer updates one "
                                                     r"backend$"):
        SGD([{"params": numpy_model[0]}, {"params": strict_model[0]}], lr=0.1)
    with pytest.raises(bp.DeviceMismatchError, match=r"^SGD: parameter 'x\.weight' is a array_api_strict array .*, "
                                                     r"not an array of backend numpy, where the other parameters "
                                                     r"live$"):
        SGD([{"params": numpy_model}, {"params": {"x.weight": strict_model[0].params["weight"]}}], lr=0.1)
