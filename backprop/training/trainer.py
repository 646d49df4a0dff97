"""The training loop: shuffle, batch, forward, loss, backward, update — epoch after epoch.

Everything stays on the device during an epoch: the data is copied there once,
batches are gathered with ``take``, and the loss and metric sums accumulate
in a small device vector that reaches the host only at logging points (about
``log_points`` times an epoch) and at the end of the epoch.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from backends import dtype_name
from backends.array_types import Array
from backends.base import METRICS

from .. import validators as check
from ..data.splitting import stratified_holdout
from ..errors import ConfigError, DataError, ModelFileError, ShapeError, TrainingError, short_repr
from ..io.checkpoints import CallbackState, TrainingState, check_fits, read_checkpoint, write_checkpoint
from ..layers import architecture
from ..losses import LOSSES, Loss
from ..metrics import Metric, format_loss
from ..on_device import on_device
from ..optim import Optimizer, make_optimizer, make_schedule
from .batches import parse_accumulate_steps, parse_batch_size, update_bounds
from .callbacks import Callback
from .compiled import CompiledStep, compiled_step
from .interrupts import Terminated, ctrl_c_held
from .metrics import evaluate, labels_per_example, metric_results, metrics_for
from .step import MicroBatch, TrainingStep


class Trainer:
    """Trains ``model`` by backpropagation.

    ``batch_size``: 1 (stochastic: one update per example), n (mini-batch),
    or None/"full" (full batch: one update per epoch).

    ``accumulate_steps``: k micro-batches per optimizer step (gradient accumulation, for batches that do not
    fit in memory at once): each step takes the gradient of the mean loss over ``k · batch_size`` examples,
    computed ``batch_size`` at a time and summed, each micro-batch weighted by its share of the step's examples
    — the same update as ``batch_size=k · batch_size`` (to float rounding; also for the short last step, and
    ``drop_last`` drops a short last step). Layers whose result depends on the batch (batch statistics,
    dropout masks) see micro-batches. With full batch, the epoch's one step is computed in k parts.

    Shuffling and dropout masks come from device generators seeded with (seed, epoch), so the same seed, data
    and backend give the same weights, and a run resumed from a checkpoint continues exactly as if it had
    never stopped.

    ``communicator``: a ``backprop.distributed.Communicator`` for data-parallel training on several processes
    (``mpirun -n N``): each rank runs forward and backward on its shard of every global batch (of every
    micro-batch), weighted by its share of the step's examples, one all-reduce per step sums the gradients,
    metrics are summed over the ranks, and only rank 0 prints and runs the callbacks that write files
    (``Callback.root_only``). None (the default): one process, nothing changes.

    The work of one update is a ``TrainingStep`` (``backprop/training/step.py``), which the loop feeds and
    whose metrics it reads at ``log_points`` evenly spaced steps of each epoch (the only host reads of an
    epoch). ``compile=True`` runs it as one compiled program (``backprop/training/compiled.py``: ``jax.jit`` on
    JAX, ``torch.compile`` on PyTorch, CUDA Graph capture on CuPy; a ``ConfigError`` elsewhere); the weights are
    the eager step's to float rounding.

    ``metrics``: what each epoch records besides the loss, as ``train_<name>`` and ``val_<name>``: ``Metric``
    instances (``backprop/metrics.py``: your own too) or names (``accuracy``, ``binary_accuracy``, ``mae``,
    ``r2``); None (the default) takes the loss's (``Loss.default_metrics``): accuracy for cross-entropy,
    thresholded accuracy for binary cross-entropy, MAE and R² for MSE.
    """

    def __init__(self, model: Any, *, loss: str | Loss = "cross_entropy", optimizer: str | Optimizer = "adam",
                 lr: float | None = None, weight_decay: float = 0.0, epochs: int = 10,
                 batch_size: int | str | None = 32, accumulate_steps: int = 1, drop_last: bool = False,
                 shuffle: bool = True, seed: int = 0,
                 schedule: str = "constant", warmup_epochs: int = 0, clip_norm: float | None = None,
                 callbacks: Sequence[Callback] = (), progress: bool = True, log: Callable[[str], Any] | None = print,
                 grad_norm_samples: int = 10, log_points: int = 20, communicator: Any = None,
                 compile: bool | str | None = False, metrics: Sequence[Metric | str] | None = None):
        self.model = model
        self.backend = model.backend
        epochs = check.positive_int(epochs, "epochs")
        seed = check.non_negative_int(seed, "seed")
        if clip_norm is not None:
            clip_norm = check.positive_number(clip_norm, "clip_norm")
        self.epochs, self.seed, self.clip_norm = epochs, seed, clip_norm
        self.batch_size = parse_batch_size(batch_size)
        self.accumulate_steps = parse_accumulate_steps(accumulate_steps)
        self.drop_last, self.shuffle = drop_last, shuffle
        self.loss_fn = _make_loss(loss)
        self.metrics = metrics_for(self.loss_fn, metrics)
        self._output_width: int | None = None
        if isinstance(optimizer, Optimizer):
            self.optimizer = optimizer
        else:
            hyper = {"weight_decay": weight_decay} if weight_decay else {}
            if lr is not None:
                hyper["lr"] = lr
            self.optimizer = make_optimizer(optimizer, model, **hyper)
        self.base_lr = self.optimizer.lr
        self.schedule = make_schedule(schedule, epochs=epochs, warmup_epochs=warmup_epochs)
        self.callbacks: list[Callback] = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise ConfigError(f"callbacks must be Callback instances, got {type(callback).__name__}")
        if communicator is not None:
            from ..distributed import Communicator  # lazy: circular import (distributed imports training)

            if not isinstance(communicator, Communicator):
                raise ConfigError(f"communicator must be a backprop.distributed.Communicator, got "
                                  f"{type(communicator).__name__}")
        self.communicator = communicator
        self.is_root = communicator is None or communicator.is_root
        if compile is not False and compile is not None:
            compiled_step(self._eager_step(), compile)  # checked now: a ConfigError before any work
        self.compile = compile if compile else False
        self._compiled: tuple[tuple, Any] | None = None
        self.progress, self._log = progress, log
        self.grad_norm_samples, self.log_points = max(1, grad_norm_samples), max(1, log_points)
        self.epoch = 0  # completed epochs
        self.history: list[dict] = []
        self.stop_training = False
        self._snapshot = None

    # -- public API ---------------------------------------------------------
    def log(self, message: str) -> None:
        if self._log is not None and self.is_root:
            if self.progress:
                from tqdm.auto import tqdm  # lazy: runs without a progress bar do not pay its import

                tqdm.write(message)
            else:
                self._log(message)

    @on_device
    def fit(self, x: Array, y: Array, *, validation_data: tuple[Array, Array] | None = None,
            validation_split: float = 0.0) -> list[dict]:
        """Train until ``epochs`` epochs are complete (counting any done before a resume) or a callback stops
        it. ``x``, ``y``: host (NumPy) or device arrays; they are copied to the device once. With a
        communicator of several ranks, an exception on one rank ends the whole job (``MPI_Abort``) after
        printing it with the rank, instead of leaving the other ranks waiting forever."""
        if self.communicator is not None:
            with self.communicator.abort_on_error():
                return self._fit(x, y, validation_data, validation_split)
        return self._fit(x, y, validation_data, validation_split)

    def _fit(self, x, y, validation_data, validation_split) -> list[dict]:
        x, y = self._to_device(x, "x"), self._to_device(y, "y", labels=True)
        if validation_data is not None:
            if validation_split:
                raise ConfigError("give either validation_data or validation_split, not both")
            x_val, y_val = (self._to_device(a, name, labels=name == "y_val")
                            for a, name in zip(validation_data, ("x_val", "y_val")))
        elif validation_split:
            x, y, x_val, y_val = self._split(x, y, validation_split)
        else:
            x_val = y_val = None
        self._check_data(x, y, "training data")
        for metric in self.metrics:  # R²'s shift, from the training targets: the same on every rank
            metric.prepare(self.model.backend.xp, y)
        if x_val is not None:
            self._check_data(x_val, y_val, "validation data")
        if self.communicator is not None:
            self.communicator.broadcast_parameters(self.model)  # every rank starts from rank 0's weights
        self.stop_training = False
        callbacks = self._active_callbacks()
        for callback in callbacks:
            callback.on_train_begin(self)
        try:
            while self.epoch < self.epochs and not self.stop_training:
                with ctrl_c_held():
                    self._snapshot = self._take_snapshot()
                record = self._run_epoch(x, y, x_val, y_val)
                with ctrl_c_held():  # an epoch is counted with its history and callbacks, or not at all
                    self.epoch += 1
                    self.history.append(record)
                    self.log(_format_record(record, self.epochs, self.metrics))
                    for callback in callbacks:
                        callback.on_epoch_end(self, record)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM where it raises Terminated (the CLI)
            what = "interrupted by SIGTERM" if isinstance(interrupt, Terminated) else "interrupted"
            if self._restore_snapshot():
                self.log(f"{what} during epoch {self.epoch + 1}; rolled back to the end of epoch {self.epoch}")
            else:
                self.log(f"{what} after epoch {self.epoch}")
            for callback in callbacks:
                callback.on_interrupt(self)
            raise
        with ctrl_c_held():  # early stopping's restored weights and the last checkpoint go together
            for callback in callbacks:
                callback.on_train_end(self)
        return self.history

    def _active_callbacks(self) -> list[Callback]:
        """The callbacks this process runs: all of them, except ``root_only`` ones on ranks other than 0."""
        return [c for c in self.callbacks if self.is_root or not getattr(c, "root_only", False)]

    @on_device
    def train_epoch(self, x: Array, y: Array) -> dict:
        """One pass over ``(x, y)`` (already on the device, not checked): the work of one epoch of ``fit``,
        without validation or callbacks. For benchmarks and hand-made loops."""
        record = self._run_epoch(x, y, None, None)
        self.epoch += 1
        self.history.append(record)
        return record

    @on_device
    def copy_weights(self) -> dict:
        """Copies of the model's parameters and buffers (running statistics, say), keyed as in model files."""
        return {key: self._copy(array) for key, array in self._weights().items()}

    @on_device
    def set_weights(self, weights: dict) -> None:
        """Give the model copies of what ``copy_weights`` returned (``weights`` stays as it is, to be set
        again: the copies, not its arrays, go into the model, where a step may update them in place)."""
        self.model.replace_arrays({key: self._copy(weights[key]) for key in self._weights()})

    def _weights(self) -> dict:
        return self.model.named_arrays()

    def _copy(self, array):
        return self.backend.xp.asarray(array, copy=True, device=self.backend.device)

    # -- one epoch ----------------------------------------------------------
    def _run_epoch(self, x, y, x_val, y_val) -> dict:
        backend, xp, model, comm = self.backend, self.backend.xp, self.model, self.communicator
        started = time.perf_counter()
        self.optimizer.lr = self.schedule(self.epoch, self.base_lr)
        rank = 0 if comm is None else comm.rank
        model.reseed((self.seed, self.epoch, 1) if rank == 0 else (self.seed, self.epoch, 1, rank))  # own masks
        n = x.shape[0]
        updates = update_bounds(n, self.batch_size, self.accumulate_steps, self.drop_last)
        full_batch = len(updates) == 1 and (updates[0][0][0], updates[0][-1][1]) == (0, n)
        order = backend.random((self.seed, self.epoch, 0)).permutation(n) if self.shuffle and not full_batch else None
        rows = EpochRows(backend, x, y, order)
        steps = len(updates)  # optimizer steps
        norm_steps = {round(i * (steps - 1) / max(1, self.grad_norm_samples - 1))
                      for i in range(min(steps, self.grad_norm_samples))}
        points = min(steps, self.log_points)  # evenly spaced, the last at the epoch's last step
        log_steps = {round((i + 1) * steps / points) - 1 for i in range(points)}
        step_function = self._training_step(x)
        layout = step_function if isinstance(step_function, TrainingStep) else step_function.step  # its metrics
        metrics = step_function.new_metrics()
        norms: dict = {}
        weight_check = None  # device flags of the first step's check, read at the first log point
        seen = 0
        per_example = labels_per_example(y)
        bar = self._progress_bar(n)
        try:
            for step, micro_batches in enumerate(updates):
                examples = micro_batches[-1][1] - micro_batches[0][0]  # of this update, over all ranks
                batch = []
                for start, stop in micro_batches:
                    lo, hi = (start, stop) if comm is None else comm.shard(start, stop)  # this rank's rows
                    if hi > lo:  # a rank can get no rows of a global batch smaller than the number of ranks
                        # The loss is the mean over these rows: weighted by their share of the update's examples,
                        # the gradients added up over micro-batches (and summed over ranks) are those of the
                        # mean loss over all of them, as one batch of them all would give.
                        x_rows, y_rows = rows.slice(lo, hi)
                        batch.append(MicroBatch(x_rows, y_rows, (hi - lo) / examples))
                    seen += stop - start
                    if bar is not None:
                        bar.update(stop - start)
                if step == 0:
                    before = self._params_before_first_step()
                metrics, _ = step_function.run(batch, metrics, norms if step in norm_steps else None)  # adds to norms
                if step == 0:
                    weight_check = self._check_the_step_changed_weights(before)
                if step in log_steps:  # the only host synchronizations inside an epoch (besides the all-reduce)
                    values = metrics if weight_check is None else xp.concat([metrics, weight_check])
                    host = [float(v) for v in backend.to_host(values)]
                    if weight_check is not None:
                        weight_check = None
                        self._fail_unchanged_weights(*host[layout.metrics_size:])
                    figures = dict(zip(METRICS, host))
                    finite, good = float(figures["nonfinite"] == 0), figures["good_steps"]
                    mean_loss, correct = figures["loss_sum"], figures["correct"]
                    if comm is not None:  # every rank decides on the same global figures
                        finite, good, mean_loss, correct = comm.reduce_progress(finite, good, mean_loss, correct)
                    if not finite:
                        self._fail_nonfinite(int(good), steps)
                    if bar is not None:
                        shown = {"loss": format_loss(mean_loss / seen)}
                        if layout.accuracy is not None:
                            shown["acc"] = f"{correct / (seen * per_example):.3f}"
                        bar.set_postfix(shown, refresh=False)
        finally:
            if bar is not None:
                bar.close()
            rows.release()
        names = list(model.named_parameters())
        sampled = list(norms.items())
        size = layout.metrics_size
        kept = metrics[:2] if size == len(METRICS) else xp.concat([metrics[:2], metrics[len(METRICS):]])
        host = [float(v) for v in backend.to_host(xp.concat([kept, *(vector for _, vector in sampled)]))]
        figures_size = 2 + size - len(METRICS)
        norm_sums = dict.fromkeys(names, 0.0)
        offset = figures_size
        for key, _ in sampled:
            for name, value in zip(key, host[offset:offset + len(key)]):
                norm_sums[name] = norm_sums.get(name, 0.0) + value
            offset += len(key)
        host = host[:figures_size]
        if comm is not None:
            host = comm.sum_values(host)
        record: dict = {"epoch": self.epoch + 1}
        train = self._train_results(layout, host, seen, per_example)
        val = None
        if x_val is not None:
            val = (evaluate(model, x_val, y_val, self.loss_fn, metrics=self.metrics) if comm is None
                   else comm.evaluate(model, x_val, y_val, self.loss_fn, self.metrics))
        for name, value in train.items():
            record[f"train_{name}"] = value
        for name in train:
            record[f"val_{name}"] = None if val is None else val[name]
        samples = len(norm_steps)
        record["lr"] = self.optimizer.lr
        record["grad_norms"] = {name: value / samples for name, value in norm_sums.items()} if names else {}
        record["time"] = time.perf_counter() - started
        record["samples_per_second"] = seen / record["time"] if record["time"] > 0 else None
        record["steps"] = steps
        return record

    def _train_results(self, step: TrainingStep, host: list[float], seen: int, per_example: int) -> dict:
        """``{"loss": ..., name: ...}`` of an epoch from the host copy of its figures: the loss sum, the correct
        count, then the sums of the metrics other than accuracy (``TrainingStep``'s vector less its counters)."""
        sums, offset = [], 2
        for metric in self.metrics:
            if metric is step.accuracy:
                sums.append(host[1] / per_example)  # correct positions -> a sum of per-example fractions
            else:
                size = metric.size(step.outputs)
                sums += host[offset:offset + size]
                offset += size
        return metric_results(host[0], sums, seen, self.metrics, step.outputs)

    def _outputs(self, x=None) -> int | None:
        """The model's outputs per position (what metrics with sums per output need): found with one example
        of ``x`` the first time (kept: training does not change it), or None without metrics that need it."""
        if not any(m.size(1) != m.size(0) for m in self.metrics):
            return None
        if self._output_width is None and x is not None:
            self._output_width = int(self.model.forward(x[:1, ...], training=False).shape[-1])
        return self._output_width

    def _eager_step(self, outputs: int | None = None) -> TrainingStep:
        """The training step as it runs without a compiler (``outputs``: the model's, for metrics that need it)."""
        allreduce = None if self.communicator is None else self.communicator.allreduce_gradients
        return TrainingStep(self.model, self.loss_fn, self.optimizer, clip_norm=self.clip_norm, allreduce=allreduce,
                            metrics=self.metrics, outputs=outputs if outputs is not None else 1)

    def _training_step(self, x: Any = None) -> TrainingStep | CompiledStep:
        """The step function the epoch loop feeds (see ``backprop/training/step.py``), compiled with
        ``compile`` (``backprop/training/compiled.py``; kept from epoch to epoch: its programs are reused).
        ``x``: data of the run (one example of it tells the model's outputs, for metrics that need them)."""
        outputs = self._outputs(x)
        step = self._eager_step(outputs)
        if not getattr(self, "compile", False):
            return step
        key = (id(self.model), id(self.loss_fn), id(self.optimizer), self.clip_norm, outputs)
        if self._compiled is None or self._compiled[0] != key:
            self._compiled = (key, compiled_step(step, self.compile))
        return self._compiled[1]

    # A step that changes no weight although the gradients are non-zero means the updates never reach the
    # model: an optimizer that does not store the arrays its update returns. With mutable arrays (NumPy) such a
    # bug can hide behind in-place writes; with immutable ones (JAX) ``w -= lr * g`` only rebinds a name, and
    # training would run to the end, printing losses, with the initial weights. Checked at the first step of
    # every epoch only: the comparison reads every weight and synchronizes with the host once, a cost no step
    # in the middle of an epoch should pay, and an optimizer that does not write back fails at its first step.
    def _params_before_first_step(self) -> dict:
        """The parameters before the epoch's first step: the snapshot's copies, taken just before the epoch
        (``fit``), or new copies when there is none (``train_epoch``)."""
        if self._snapshot is not None and self._snapshot[0] == self.epoch:
            weights = self._snapshot[1]
            return {name: weights[f"param/{name}"] for name in self.model.named_parameters()}
        return {name: self._copy(param.value) for name, param in self.model.named_parameters().items()}

    def _check_the_step_changed_weights(self, before: dict):
        """Device flags ``[any weight changed, any gradient non-zero]`` after the epoch's first step, to be read
        at the next log point with the metrics (``_fail_unchanged_weights``); None when there is nothing to
        check (lr 0, no gradients)."""
        if self.optimizer.lr == 0:
            return None
        xp = self.backend.xp
        params = self.model.named_parameters()
        changed, nonzero = [], []
        for name, grad in self.model.named_gradients().items():
            if name in before:
                changed.append(xp.any(params[name].value != before[name]))
                nonzero.append(xp.any(grad != 0))
        if not changed:
            return None
        dtype = self.model.dtype
        return xp.astype(xp.stack([xp.any(xp.stack(changed)), xp.any(xp.stack(nonzero))]), dtype)

    def _fail_unchanged_weights(self, any_changed: float, any_nonzero: float) -> None:
        """Raise ``TrainingError`` when the epoch's first step left every weight bit for bit as it was, although
        some gradient was non-zero and the learning rate was not 0."""
        if any_nonzero and not any_changed:
            raise TrainingError(
                f"the optimizer's first step of epoch {self.epoch + 1} left every weight exactly as it was although "
                f"the gradients are non-zero (lr={self.optimizer.lr:g}): its updates do not reach the model (an "
                f"optimizer that does not store the arrays its update returns; with immutable arrays, as JAX's, "
                f"w -= lr * g only rebinds a name), or lr is too small to change any weight")

    def _fail_nonfinite(self, good_steps: int, steps: int):
        self._restore_snapshot()
        raise TrainingError(
            f"the loss became NaN or infinite at epoch {self.epoch + 1}, step {good_steps + 1} of {steps}; "
            f"likely causes: learning rate too high (lr={self.optimizer.lr:g}), exploding gradients (try "
            f"gradient clipping), or NaN/inf in the data. The weights of the last good epoch ({self.epoch}) "
            f"are kept")

    def _progress_bar(self, total):
        if not self.progress or not self.is_root:
            return None
        from tqdm.auto import tqdm  # lazy: runs without a progress bar do not pay its import

        return tqdm(total=total, desc=f"epoch {self.epoch + 1}/{self.epochs}", unit=" samples", unit_scale=True,
                    leave=False, dynamic_ncols=True, disable=None)

    # -- snapshots, checkpoints, resume --------------------------------------
    def _take_snapshot(self):
        """The state at the start of the epoch about to run (to roll an unfinished epoch back to)."""
        xp, device = self.backend.xp, self.backend.device
        arrays, info = self.optimizer.state_dict()
        optimizer_arrays = {k: xp.asarray(v, copy=True, device=device) for k, v in arrays.items()}
        return self.epoch, self.copy_weights(), optimizer_arrays, info

    def _restore_snapshot(self) -> bool:
        """Roll back to the start of the unfinished epoch; False when no epoch was unfinished."""
        if self._snapshot is None or self._snapshot[0] != self.epoch:
            return False  # interrupted between epochs: the weights already match the epochs counted
        _, weights, arrays, info = self._snapshot
        self.set_weights(weights)
        self.optimizer.load_state_dict(arrays, info)
        return True

    @on_device
    def training_state(self, run_config: Mapping[str, Any] | None = None) -> TrainingState:
        """Everything a resumed run needs, copied to the host: a plain ``TrainingState``
        (``backprop/io/checkpoints.py``) that ``restore`` takes back and ``write_checkpoint`` writes.
        ``run_config``: the options the run was started with, kept with it."""
        host = self.backend.to_host  # a copy, never a view: the state does not change as training goes on
        optimizer_arrays, optimizer_info = self.optimizer.state_dict()
        callbacks = []
        for callback in self.callbacks:
            arrays, info = callback.state_dict()
            callbacks.append(CallbackState(type(callback).__name__, copy.deepcopy(info),
                                           {key: host(array) for key, array in arrays.items()}))
        return TrainingState(
            architecture=architecture(self.model), dtype=dtype_name(self.model.dtype),
            weights={key: host(array) for key, array in self.model.named_arrays().items()},
            optimizer_arrays={key: host(array) for key, array in optimizer_arrays.items()},
            optimizer_info=copy.deepcopy(optimizer_info), epoch=self.epoch, epochs=self.epochs, seed=self.seed,
            base_lr=self.base_lr, history=copy.deepcopy(self.history), callbacks=callbacks,
            run=dict(run_config or {}))

    @on_device
    def restore(self, state: TrainingState, *, source: object = "checkpoint") -> None:
        """Continue from ``state`` (what ``training_state`` returned, or ``read_checkpoint`` read): the model's
        weights, the optimizer's state, the callbacks' state (of those of the same class at the same place),
        the epoch count, learning rate and history. The model must have exactly the state's arrays; a state that
        does not fit is a ``ModelFileError`` naming ``source``, raised before anything is restored."""
        check_fits(state, {key: tuple(array.shape) for key, array in self.model.named_arrays().items()}, source)
        backend = self.backend

        def to_device(arrays: Mapping[str, Any]) -> dict[str, Any]:
            return {name: backend.from_host(array, dtype=None if array.dtype.kind in "iub" else
                                            backend.dtype(str(array.dtype))) for name, array in arrays.items()}

        try:
            self.set_weights(to_device(state.weights))
            self.optimizer.load_state_dict(to_device(state.optimizer_arrays), copy.deepcopy(state.optimizer_info))
            for callback, saved in zip(self.callbacks, state.callbacks):
                if saved.type == type(callback).__name__:
                    callback.load_state_dict(to_device(saved.arrays), copy.deepcopy(saved.info))
        except (KeyError, ConfigError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{source}: checkpoint does not match this model and optimizer "
                                 f"({short_repr(str(exc), 300)})") from None
        self.epoch, self.base_lr = state.epoch, state.base_lr
        self.history = copy.deepcopy(state.history)

    def save_checkpoint(self, path: str | os.PathLike, *, run_config: Mapping[str, Any] | None = None) -> None:
        """Write a resumable checkpoint file atomically (a failed write keeps the previous one)."""
        write_checkpoint(path, self.training_state(run_config))

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore a checkpoint file into this trainer; returns the run configuration saved with it."""
        state = read_checkpoint(path)
        self.restore(state, source=path)
        return state.run

    # -- data ---------------------------------------------------------------
    def _to_device(self, array, name, labels=False):
        """Put data on the device once. Floating features take the model's dtype; integer inputs (token
        indices for an Embedding) and labels keep theirs."""
        backend, xp = self.backend, self.backend.xp
        if not backend.owns(array):
            try:
                array = backend.from_host(array)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{name}: expected a numeric array, got {type(array).__name__} ({exc})") from None
        if not labels and xp.isdtype(array.dtype, "real floating") and array.dtype != self.model.dtype:
            array = xp.astype(array, self.model.dtype)
        return array

    def _split(self, x, y, fraction):
        """The one validation split (``backprop.data.split_validation``'s): stratified by class, seeded with the
        trainer's seed. The labels go to the host to be counted; the features stay where they are."""
        kept, held = stratified_holdout(self.backend.to_host(y), fraction, self.seed, "validation_split",
                                        "validation_split")
        xp = self.backend.xp
        train_idx, val_idx = self.backend.from_host(kept), self.backend.from_host(held)
        return (xp.take(x, train_idx, axis=0), xp.take(y, train_idx, axis=0),
                xp.take(x, val_idx, axis=0), xp.take(y, val_idx, axis=0))

    def _check_data(self, x, y, what):
        xp = self.backend.xp
        if x.ndim < 2:
            raise ShapeError(f"{what}: expected features of shape (examples, features), got {tuple(x.shape)}")
        if y.shape[0] != x.shape[0]:
            raise ShapeError(f"{what}: {x.shape[0]} examples but {y.shape[0]} labels")
        if x.shape[0] == 0:
            raise DataError(f"{what}: no examples")
        expected = _input_features(self.model)
        if expected is not None and x.shape[-1] != expected:
            raise ShapeError(f"{what} has {x.shape[-1]} features per example, but the model expects {expected}")
        outputs = self.model.forward(x[:1, ...], training=False).shape[-1]
        classes = self.loss_fn.label_classes(outputs)
        checks = [xp.sum(xp.astype(xp.logical_not(xp.isfinite(x)), xp.float32))]
        if xp.isdtype(y.dtype, "integral") and classes is not None:
            checks += [xp.astype(xp.min(y), xp.float32), xp.astype(xp.max(y), xp.float32)]
        bad, *label_range = (float(v) for v in self.backend.to_host(xp.stack(checks)))
        if bad:
            raise DataError(f"{what}: {int(bad)} NaN or infinite feature values; clean or impute them first")
        if classes is not None and label_range and (label_range[0] < 0 or label_range[1] >= classes):
            expected = (f"0..{classes - 1} for this model's {outputs} outputs" if classes == outputs
                        else f"0..{classes - 1} for {self.loss_fn!r}")
            raise DataError(f"{what}: labels must be class numbers {expected}, found values from "
                            f"{int(label_range[0])} to {int(label_range[1])}")


class EpochRows:
    """The rows of an epoch in their shuffled order: on backends that ask for it (``Backend.permutes_epochs``:
    GPUs) the data permuted once per epoch and handed out as slices (two gathers an epoch instead of two a step;
    a slice is a view, no copy and no kernel) when the permuted copy fits in a quarter of the memory the device
    has free; else gathered batch by batch. The same rows in the same order either way."""

    def __init__(self, backend: Any, x: Array, y: Array, order: Array | None):
        self.backend, self.x, self.y, self.order = backend, x, y, order
        self.n = x.shape[0]
        self.permuted: tuple[Array, Array] | None = None  # (x, y) in the epoch's order, when kept whole
        if order is not None and backend.permutes_epochs and self._fits(backend, x, y):
            xp = backend.xp
            self.permuted = xp.take(x, order, axis=0), xp.take(y, order, axis=0)

    @staticmethod
    def _fits(backend, x, y) -> bool:
        free = backend.available_memory()
        needed = sum(_size(a.shape) * _itemsize(backend.xp, a.dtype) for a in (x, y))
        return free is not None and needed * 4 <= free

    def slice(self, lo: int, hi: int) -> tuple[Array, Array]:
        """``(x, y)`` of rows ``lo:hi`` of the epoch's order."""
        order = self.order
        if order is None:
            if (lo, hi) == (0, self.n):
                return self.x, self.y
            return self.x[lo:hi, ...], self.y[lo:hi, ...]
        if self.permuted is not None:
            xs, ys = self.permuted
            return xs[lo:hi, ...], ys[lo:hi, ...]
        xp, index = self.backend.xp, order[lo:hi]
        return xp.take(self.x, index, axis=0), xp.take(self.y, index, axis=0)

    def release(self) -> None:
        """Drop the permuted copy (between epochs only the data itself is held)."""
        self.permuted = None


def _itemsize(xp, dtype) -> int:
    if xp.isdtype(dtype, "bool"):
        return 1
    info = xp.finfo(dtype) if xp.isdtype(dtype, ("real floating", "complex floating")) else xp.iinfo(dtype)
    return info.bits // 8


def _size(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def fit(model: Any, x: Array, y: Array, **options: Any) -> list[dict]:
    """Train ``model`` on ``(x, y)``; keyword options as for ``Trainer`` and ``Trainer.fit``."""
    fit_options = {k: options.pop(k) for k in ("validation_data", "validation_split") if k in options}
    if options.pop("distributed", False) and options.get("communicator") is None:
        from ..distributed import world  # lazy: circular import (distributed imports training)

        options["communicator"] = world()  # MPI.COMM_WORLD: every process mpirun started
    return Trainer(model, **options).fit(x, y, **fit_options)


def _make_loss(loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    try:
        return LOSSES[str(loss).lower().replace("-", "_")]()
    except KeyError:
        raise ConfigError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}") from None


def _input_features(model):
    """The feature count the first layer expects, when it says (a Dense layer does)."""
    first = getattr(model, "layers", [model])[0]
    return getattr(first, "in_features", None)


def _format_record(record: dict, epochs: int, metrics: Sequence[Metric]) -> str:
    """One line of the log per epoch: the loss and each metric (accuracy as ``acc 97.50%``), on the training
    and, when there is one, the validation data."""
    def figures(prefix: str) -> str:
        key = prefix or "train_"
        text = f"{prefix}loss {format_loss(record[key + 'loss'])}"
        for metric in metrics:
            value = record.get(key + metric.name)
            label = "acc" if metric.name == "accuracy" else metric.name
            text += f"  {prefix}{label} {metric.format(value) if value is not None else '-'}"
        return text

    text = f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  " + figures("")
    if record.get("val_loss") is not None:
        text += "  " + figures("val_")
    rate = record.get("samples_per_second")
    text += f"  lr {record['lr']:.3g}  {record['time']:.2f}s" + (f"  {rate:,.0f} samples/s" if rate else "")
    return text


__all__ = ["Trainer", "fit"]
