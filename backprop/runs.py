"""The ``backprop train`` job: build the model from options, train, save model, history, plots, summary.

Kept apart from ``cli.py`` (which only parses arguments) so the same run can
be started, resumed and tested from Python.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from backends import Backend, dtype_name, get_backend

from . import specs
from .data import load_dataset
from .data.dataset import Dataset
from .data.loading import check_dataset_options, check_recorded_dataset, dataset_file, file_sha256
from .data.splitting import holdout_size
from .distributed import Communicator, device_backend
from .errors import ConfigError, TrainingError
from .io.atomic import remove_stale_temp_files, write_text_atomic
from .io.checkpoints import model_from_state, read_checkpoint
from .io.directory_lock import LOCK_FILE, lock_directory, refuse_if_locked
from .io.model_files import MODEL_FILE, save_model
from .layers import Activation, Dense, Dropout, Layer, Sequential, declared_arrays
from .losses import LOSSES, Loss
from .metrics import MAE, Accuracy, Metric, format_loss
from .models import mlp
from .optim import make_optimizer
from .training import (
    Callback,
    Checkpoint,
    EarlyStopping,
    GradientMonitor,
    HistoryWriter,
    Trainer,
    batch_mode,
    evaluate,
    predict_classes,
)
from .training.batches import parse_batch_size
from .validators import is_integer

HostArray = Any  # a NumPy array of a Dataset (runs.py itself imports no array library)
Log = Callable[[str], None]  # where a run says what it does (print, or a file's writer)

CHECKPOINT_FILE = "checkpoint.safetensors"
HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILES = ("learning_curves.png", "confusion_matrix.png")
#: Every file a run writes into its directory (besides the lock file): what makes a directory hold a run.
RUN_FILES = (MODEL_FILE, CHECKPOINT_FILE, HISTORY_FILE, SUMMARY_FILE, *PLOT_FILES)

#: The options of a training run and their defaults (also what a checkpoint stores to resume).
DEFAULTS = {
    "dataset": "digits", "data_dir": None, "scaling": None,
    "hidden": "256,128", "activation": "relu", "dropout": 0.0,
    "batch_size": "32", "accumulate": 1, "drop_last": False, "optimizer": "adam", "lr": None, "weight_decay": 0.0,
    "schedule": "constant", "warmup_epochs": 0, "clip_norm": None,
    "epochs": 30, "seed": 0, "validation_split": 0.1, "early_stopping": 0,
    "model": None, "loss": "cross_entropy",  # model: a spec (name or file) instead of the MLP of --hidden
    "task": "classification",  # or regression: the file's target column holds numbers (loss mse by default)
    "target_scaling": None,  # a regression's targets: None is standardize (mean 0, std 1 per output), or none
}
#: The options that shape the default MLP, which a spec (--model) replaces.
MLP_OPTIONS = ("hidden", "activation", "dropout")


def parse_hidden(text: str | Sequence[int]) -> list[int]:
    """Hidden layer sizes from ``"256,128"`` (or a list of ints); ``"none"`` is no hidden layer (a linear
    model). An empty text is an error, not a linear model: it is what an unset shell variable gives."""
    if isinstance(text, (list, tuple)):
        sizes = list(text)
    else:
        spelled = str(text).replace(" ", "")
        if spelled.lower() == "none":
            return []
        parts = spelled.split(",")
        if not spelled or not all(parts):
            raise ConfigError(f"--hidden expects comma-separated layer sizes such as 256,128 (or none for no hidden "
                              f"layer), got {text!r}")
        try:
            sizes = [int(part) for part in parts]
        except ValueError:
            raise ConfigError(f"--hidden expects comma-separated layer sizes such as 256,128, got {text!r}") from None
    if any(not is_integer(n) or n <= 0 for n in sizes):
        raise ConfigError(f"--hidden expects positive layer sizes such as 256,128, got {text!r}")
    return sizes


def check_options(options: dict, *, resume: bool = False) -> dict:
    """The run's options with defaults filled in, every one checked before anything is loaded or written.

    The checks are the run's own code, not a copy of its rules: the dataset options go through the loader's
    check, and a stand-in of the model (one unit per hidden layer, on the host) is built by ``build_model``
    and handed to ``Trainer`` with the run's settings, so the optimizer, learning rate, schedule, batch size,
    seed, activation, dropout, clipping, ... are refused by the same lines that would refuse them later.

    With a spec (``model``), its ``[train]`` table gives the defaults of the options not set, and its form
    (layer types, option names) is checked; its shapes are checked when the data is known. A resumed run
    (``resume``) has every option recorded and its model in its checkpoint: the spec is not read again."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown run option(s) {', '.join(unknown)}; expected {', '.join(DEFAULTS)}")
    if options.get("model") is not None and not resume:
        options = {**spec_defaults(options["model"], options), **options}
    if options.get("task") == "regression" and "loss" not in options:
        options = {**options, "loss": "mse"}  # the loss of a regression, unless one is named
    options = {**DEFAULTS, **options}
    check_dataset_options(options["dataset"], options["data_dir"], options["scaling"], options["task"],
                          options["target_scaling"])
    if options["task"] == "regression" and options["loss"] != "mse":
        raise ConfigError(f"--task regression fits numeric targets with --loss mse, not {options['loss']} (a loss "
                          f"of classes); leave out --loss")
    hidden = parse_hidden(options["hidden"])
    stand_in = build_model({**options, "hidden": [1] * len(hidden)}, 1, 2, get_backend("numpy"))
    Trainer(stand_in, loss=options["loss"], optimizer=options["optimizer"], lr=options["lr"],
            weight_decay=options["weight_decay"],
            epochs=options["epochs"], batch_size=options["batch_size"], accumulate_steps=options["accumulate"],
            drop_last=options["drop_last"], seed=options["seed"], schedule=options["schedule"],
            warmup_epochs=options["warmup_epochs"],
            clip_norm=options["clip_norm"], progress=False, log=None)
    if options["early_stopping"]:
        EarlyStopping(options["early_stopping"])
        if not options["validation_split"]:  # the run's EarlyStopping watches val_loss: found after an epoch
            raise ConfigError(f"--early-stopping {options['early_stopping']} watches the validation loss, and "
                              f"--validation-split 0 holds out no validation data")
    if options["validation_split"]:
        holdout_size(None, options["validation_split"], "--validation-split", "validation_split")
    return options


def spec_defaults(model: str | os.PathLike, given: dict) -> dict:
    """The options a spec's ``[train]`` table sets (each one checked to be a run option), after checking that
    ``given`` sets none of the MLP's options, which a spec replaces."""
    spec = specs.load_spec(model)
    mlp_given = [key for key in MLP_OPTIONS if key in given and not _same_option(key, given[key], DEFAULTS[key])]
    if mlp_given:
        flags = ", ".join("--" + key for key in mlp_given)
        raise ConfigError(f"{flags} shape{'s' if len(mlp_given) == 1 else ''} the default MLP, and --model "
                          f"{model} lists its own layers; leave {'it' if len(mlp_given) == 1 else 'them'} out, or "
                          f"change the layers in the spec")
    for key, value in spec.train.items():
        if key not in DEFAULTS or key in (*MLP_OPTIONS, "model"):
            allowed = [k for k in DEFAULTS if k not in (*MLP_OPTIONS, "model")]
            raise ConfigError(f"{spec.source}: [train] {key} is not a backprop train option; expected "
                              f"{', '.join(allowed)}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{spec.source}: [train] {key} must be a string, a number or true/false, got {value!r}")
    return dict(spec.train)


def make_model(options: dict, dataset: Dataset, backend: Backend, *, log: Log | None = None
               ) -> tuple[Layer, str | None]:
    """The run's model for ``dataset``: the spec's (``options["model"]``), its shapes checked from the input
    to the targets before anything is allocated, or the MLP of ``--hidden``. Returns ``(model, name)``."""
    check_loss_fits(options, dataset)
    outputs = output_count(dataset, options["loss"])
    if options.get("model") is None:
        check_memory(options, dataset.num_features, outputs, backend)
        return build_model(options, dataset.num_features, outputs, backend), None

    spec = specs.load_spec(options["model"])
    input_shape = specs.input_shape_for(spec, dataset.num_features, dataset.image_shape)
    resolved = specs.resolve(spec, input_shape, outputs=outputs, flat_features=dataset.num_features)
    specs.check_targets(resolved, target_shape(dataset, options["loss"]), f"the {dataset.name} dataset's targets")
    arrays = declared_arrays(resolved.architecture())
    if arrays is not None:  # None: a registered layer that does not declare its arrays; nothing to check before
        parameters = sum(math.prod(shape) for key, shape in arrays.items() if key.startswith("param/"))
        check_parameter_memory(parameters, options, backend, f"--model {options['model']}")
    return specs.build(resolved, seed=options["seed"], backend=backend), spec.source


def target_shape(dataset: Dataset, loss: str = "cross_entropy") -> tuple:
    """What the model must give for one example of ``dataset``: a score per class (at every step, for labels
    per step), one logit for binary cross-entropy on 0/1 labels, or the regression targets."""
    y = dataset.y_train
    if y.dtype.kind == "f":
        return tuple(y.shape[1:])
    return (*y.shape[1:], output_count(dataset, loss))


def output_count(dataset: Dataset, loss: str) -> int:
    """The model's outputs (per position) for ``dataset`` and the loss named ``loss``: one per class or
    regression target, except binary cross-entropy on class labels, which takes one logit (of class 1)."""
    if loss == "binary_cross_entropy" and dataset.y_train.dtype.kind in "iu":
        return 1
    return dataset.num_classes


def check_loss_fits(options: dict, dataset: Dataset) -> None:
    """A ConfigError when the run's loss cannot take the dataset's targets, found before the model is built:
    binary cross-entropy on labels of more than two classes, or MSE (numeric targets) on class labels."""
    if dataset.y_train.dtype.kind not in "iu":
        return  # float targets: every loss compares them with outputs of their shape
    loss, source = options["loss"], options["dataset"]
    if loss == "binary_cross_entropy" and dataset.num_classes > 2:
        raise ConfigError(f"--loss binary_cross_entropy fits two classes (labels 0 and 1); {source} has "
                          f"{dataset.num_classes} classes; use --loss cross_entropy")
    if loss == "mse":
        raise ConfigError(f"--loss mse fits numeric targets; {source} has class labels: use --loss cross_entropy "
                          f"(or binary_cross_entropy for 0/1 labels), or --task regression if its last column "
                          f"holds numbers to predict")


def build_model(options: dict, num_features: int, num_classes: int, backend: Backend) -> Sequential:
    """The MLP the options describe: input, hidden layers (with dropout after each), output."""
    hidden = parse_hidden(options["hidden"])
    if options["dropout"] and not hidden:
        raise ConfigError(f"--dropout {options['dropout']} applies after hidden layers, and the model has none "
                          f"(--hidden none)")
    sizes = [num_features, *hidden, num_classes]
    model = mlp(sizes, activation_name=options["activation"], seed=options["seed"], backend=backend)
    if options["dropout"]:
        layers = []
        for layer in model.layers:
            layers.append(layer)
            if isinstance(layer, Activation):  # after each hidden layer's activation
                layers.append(Dropout(options["dropout"], backend=backend))
        model = Sequential(layers)
    return model


def loss_name(loss: Loss) -> str:
    """The name ``LOSSES`` knows a loss by (what a model file records, so ``evaluate`` can use it again)."""
    for name, cls in LOSSES.items():
        if type(loss) is cls:
            return name
    raise ConfigError(f"{type(loss).__name__} is not one of the losses a model file can record "
                      f"({', '.join(LOSSES)})")


def check_memory(options: dict, num_features: int, num_classes: int, backend: Backend) -> None:
    """Refuse a model whose parameters, gradients and optimizer state (in the model's dtype) would not fit in
    the memory free on the backend's device, before any of it is allocated. A lower bound of what training
    needs (activations and the trainer's start-of-epoch copy come on top), so a model it lets through can
    still be too big, but one it stops could never have trained."""
    sizes = [num_features, *parse_hidden(options["hidden"]), num_classes]
    parameters = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))  # Dense weights and biases
    check_parameter_memory(parameters, options, backend, f"--hidden {options['hidden']}")


def check_parameter_memory(parameters: int, options: dict, backend: Backend, what: str) -> None:
    """``check_memory`` for a model of ``parameters`` parameters (``what`` names it in the message)."""
    # the optimizer's own declaration of the state it keeps per parameter (Adam: 2 arrays, SGD: none)
    stand_in = build_model({**options, "hidden": [], "dropout": 0.0}, 1, 1, get_backend("numpy"))
    state = len(make_optimizer(options["optimizer"], stand_in).buffer_names())
    dtype = dtype_name(backend.float_dtype)
    needed = parameters * (backend.xp.finfo(backend.float_dtype).bits // 8) * (2 + state)
    available = backend.available_memory()
    if available is not None and needed > available:
        kept = f"plus {state} {options['optimizer']} state array{'s' if state > 1 else ''}" if state else \
            f"{options['optimizer']} keeps no state"
        raise ConfigError(f"{what}: the model's {parameters:,} parameters need "
                          f"{_size_text(needed)} ({dtype} weights and gradients, {kept}), more than the "
                          f"{_size_text(available)} of memory available to {backend.name} ({backend.device_name})")


def _size_text(size: int) -> str:
    """Bytes in binary units for messages: '21.9 GiB', '512.0 TiB'."""
    value, unit = size / 2**30, "GiB"
    for bigger in ("TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:,.1f} {unit}"


def output_directory(requested: str | None, dataset: str, overwrite: bool) -> Path:
    """A directory for the run's files that never silently replaces an earlier run's files.

    Checked again under the directory's lock when the run starts (``claim_run_directory``); checking here
    too stops a refused run before its data is loaded."""
    if requested is None:
        stem = Path(dataset).stem if dataset.endswith((".csv", ".npz")) else dataset
        base = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, i = base, 1
        while path.exists():
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        return path
    path = Path(requested)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--output {path} exists and is not a directory")
    existing = run_files(path)
    if existing:
        refuse_if_locked(path)  # a running run's files are not "an interrupted run" to resume or overwrite
        if not overwrite:
            raise ConfigError(_refusal(path, existing))
    return path


def run_files(directory: Path) -> list[str]:
    """The names of the run files (``RUN_FILES``) that ``directory`` holds."""
    return [name for name in RUN_FILES if os.path.lexists(Path(directory) / name)]


def _refusal(path: Path, existing: list[str]) -> str:
    if MODEL_FILE in existing:
        return (f"--output {path} already holds a trained model; choose another directory, pass --overwrite, "
                f"or continue it with --resume {path}")
    if CHECKPOINT_FILE in existing:
        return (f"--output {path} holds an interrupted run ({CHECKPOINT_FILE}, no model yet); continue it with "
                f"--resume {path}, or pass --overwrite to start over")
    return (f"--output {path} already holds a run's files ({', '.join(existing)}); choose another directory or "
            f"pass --overwrite")


@contextlib.contextmanager
def claim_run_directory(output: Path, *, resume: bool = False, overwrite: bool = False, log: Log | None = print
                        ) -> Iterator[Path]:
    """Hold ``output`` for one run, from before its first file is written to its end.

    Creates the directory and takes its exclusive lock (``DirectoryInUse`` at once if another run holds
    it); removes the temporary files that a killed run's writes left behind (none can belong to a live
    writer: no other run holds the lock); and, unless resuming, refuses a directory holding any run's
    files, or with ``overwrite`` removes them first, saying which. A directory this call created is
    removed again if the run ends before writing anything in it."""
    output, log = Path(output), log or _silent  # log=None: say nothing
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output} exists and is not a directory")
    created = [path for path in (output, *output.parents) if not path.exists()]  # innermost first
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {output} ({exc.strerror})") from None
    try:
        with lock_directory(output):
            removed = remove_stale_temp_files(output, RUN_FILES)
            if removed:
                log(f"removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} left in {output} by "
                    f"an earlier run that was killed: {', '.join(path.name for path in removed)}")
            existing = [] if resume else run_files(output)
            if existing and not overwrite:
                raise ConfigError(_refusal(output, existing))
            if existing:
                for name in existing:
                    (output / name).unlink()
                log(f"--overwrite: replacing the run in {output} (removed {', '.join(existing)})")
            yield output
    finally:
        if created:
            with contextlib.suppress(OSError):
                if set(os.listdir(output)) <= {LOCK_FILE}:  # the run wrote nothing: leave no trace
                    (output / LOCK_FILE).unlink(missing_ok=True)
                    for directory in created:  # with the parents it made (runs/ of a default name); rmdir
                        directory.rmdir()  # stops at one that is not empty


def train_run(options: dict, *, output: Path, backend: Backend | str | None = None, progress: bool = True,
              plots: bool = True, resume: bool = False, overwrite: bool = False, log: Log | None = print,
              communicator: Communicator | None = None, compile: bool = False) -> dict:
    """Run (or resume) a training job; returns the summary that is also written to summary.json.

    The run holds ``output`` (see ``claim_run_directory``) from start to end: a directory that another run
    is using, or that holds another run's files (unless ``resume`` or ``overwrite``), is refused at once.
    ``communicator`` (a ``backprop.distributed.Communicator``): this process is one rank of a data-parallel
    job; every rank returns the same summary, and only rank 0 prints and writes files. Resuming reads the
    checkpoint on every rank: on several hosts ``output`` must be on a shared file system. An exception on
    one rank of several ends the whole job (see ``Communicator.abort_on_error``). ``compile``: each step as one
    compiled program (``Trainer(compile=True)``)."""
    arguments = dict(output=Path(output), backend=backend, progress=progress, plots=plots, resume=resume,
                     overwrite=overwrite, log=log or _silent, communicator=communicator, compile=compile)
    if communicator is None:
        return _train_run(options, **arguments)
    with communicator.abort_on_error():
        return _train_run(options, **arguments)


def _train_run(options, *, overwrite, **arguments) -> dict:
    communicator = arguments["communicator"]
    if communicator is not None and not communicator.is_root:  # only rank 0 writes, so only rank 0 locks
        return _run(options, **{**arguments, "log": _silent})
    with claim_run_directory(arguments["output"], resume=arguments["resume"], overwrite=overwrite,
                             log=arguments["log"]):
        return _run(options, **arguments)


def _run(options, *, output, backend, progress, plots, resume, log, communicator, compile) -> dict:
    options = check_options(options, resume=resume)
    root = communicator is None or communicator.is_root
    if communicator is None:
        backend = get_backend(backend)
    else:
        # with CuPy: one GPU per rank of a machine, chosen before any GPU is touched
        backend = device_backend(backend, communicator)
        if communicator.size > 1:
            problem = communicator.share_cores(backend)
            if problem and root:
                warnings.warn(problem, RuntimeWarning, stacklevel=2)
    with backend.activate():  # the whole run on the backend's device
        return _run_on(backend, options, output=output, progress=progress, plots=plots, resume=resume, log=log,
                       communicator=communicator, root=root, compile=compile)


def _run_on(backend, options, *, output, progress, plots, resume, log, communicator, root, compile) -> dict:
    started = time.perf_counter()
    dataset = load_dataset(options["dataset"], data_dir=options["data_dir"], scaling=options["scaling"],
                           seed=options["seed"], task=options["task"], target_scaling=options["target_scaling"])
    num_features = dataset.x_train.shape[1]
    if options["validation_split"]:  # the fraction is checked; whether it leaves training data needs the data
        holdout_size(len(dataset.x_train), options["validation_split"], "--validation-split", "validation_split")
    if resume and options["model"] is not None:  # the model the checkpoint describes, whatever the spec is now
        model, model_name = checkpoint_model(output / CHECKPOINT_FILE, backend), options["model"]
    else:
        model, model_name = make_model(options, dataset, backend)
    callbacks: list[Callback] = [GradientMonitor()]
    if options["early_stopping"]:
        callbacks.append(EarlyStopping(int(options["early_stopping"])))
    # The checkpoint before the history: a kill between the two leaves the history behind the checkpoint
    # (rewritten from it on resume), never ahead of it.
    source = dataset_file(options["dataset"])
    # lets evaluate and --resume trust the path a model or checkpoint names (see check_recorded_dataset)
    dataset_sha256 = file_sha256(source) if root and source is not None else None
    run_config = options if dataset_sha256 is None else {**options, "dataset_sha256": dataset_sha256}
    callbacks += [Checkpoint(output / CHECKPOINT_FILE, run_config=run_config), HistoryWriter(output / HISTORY_FILE)]
    trainer = Trainer(model, loss=options["loss"], optimizer=options["optimizer"], lr=options["lr"],
                      weight_decay=options["weight_decay"], epochs=int(options["epochs"]),
                      batch_size=options["batch_size"],
                      accumulate_steps=options["accumulate"], drop_last=options["drop_last"],
                      seed=options["seed"], schedule=options["schedule"], warmup_epochs=options["warmup_epochs"],
                      clip_norm=options["clip_norm"], callbacks=callbacks, progress=progress, log=log,
                      communicator=communicator, compile=compile,
                      metrics=metrics_in_target_units(options["loss"], dataset.target_scaler))
    if resume:
        trainer.load_checkpoint(output / CHECKPOINT_FILE)
        log(f"resuming {output} after epoch {trainer.epoch} of {trainer.epochs}")
    mode = batch_mode(trainer.batch_size)
    if trainer.accumulate_steps > 1:
        mode += f" accumulated {trainer.accumulate_steps} times per update"
    log(f"training {describe_model(model, model_name)} on {dataset.name} ({len(dataset.x_train)} train / "
        f"{len(dataset.x_test)} test) with {backend.name} ({backend.device_name}), {mode}, {options['optimizer']} "
        f"lr {trainer.base_lr:g}"
        + (f", {communicator.size} ranks (data-parallel)" if communicator is not None else ""))
    if dataset.target_scaler is not None:
        log(f"targets standardized with the training set's {describe_target_scaler(dataset.target_scaler)}: the "
            f"loss is the MSE of standardized targets; MAE and predictions are in the target's units")
    metadata = {"dataset": dataset.name, "task": options["task"], "num_classes": dataset.num_classes,
                "class_names": dataset.class_names,
                "image_shape": dataset.image_shape, "input_shape": [num_features], "scaler": dataset.scaler,
                "target_scaler": dataset.target_scaler, "target_names": dataset.target_names,
                "options": options,
                "loss": loss_name(trainer.loss_fn)}
    if dataset_sha256 is not None:
        metadata["dataset_sha256"] = dataset_sha256
    try:
        trainer.fit(dataset.x_train, dataset.y_train, validation_split=options["validation_split"] or 0.0)
    except TrainingError:
        if root:
            save_model(output / MODEL_FILE, model, {**metadata, "status": "stopped: non-finite loss"})
        raise
    elapsed = time.perf_counter() - started
    if not root:  # rank 0 evaluates and writes; the others get its summary
        return communicator.broadcast_object(None)
    x_test = backend.from_host(dataset.x_test)
    y_test = backend.from_host(dataset.y_test)
    test = evaluate(model, x_test, y_test, trainer.loss_fn, metrics=trainer.metrics)
    summary = {"dataset": dataset.name, **{f"test_{name}": value for name, value in test.items()},
               "test_examples": int(len(dataset.y_test)), "epochs_trained": trainer.epoch,
               "seconds": elapsed, "backend": backend.name, "device": backend.device_name,
               "parameters": model.num_parameters()}
    if communicator is not None:
        summary["ranks"] = communicator.size
    save_model(output / MODEL_FILE, model, {**metadata, "summary": summary})

    write_text_atomic(output / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    if plots:
        _plots(output, trainer.history, model, x_test, dataset, log)
    log(f"{test_report(test, trainer.metrics, dataset.y_test, dataset.target_scaler)}, {elapsed:.1f} s on "
        f"{backend.name} ({backend.device_name}); saved {output / MODEL_FILE}")
    if communicator is not None:
        communicator.broadcast_object(summary)
    return summary


def test_report(figures: dict[str, float], metrics: Sequence[Metric], labels: HostArray,
                target_scaler: dict | None = None) -> str:
    """The test figures as the logs say them: ``test accuracy 97.50% (351/360), test loss 0.0812``, or for
    another task ``test mae 0.1234, test r2 0.9876, test loss 0.0312``; with a ``target_scaler`` (a regression
    on standardized targets) the loss is said to be theirs: ``test loss 0.0012 (standardized targets)``."""
    parts = []
    for metric in metrics:
        value = figures[metric.name]
        text = f"test {metric.name} {metric.format(value)}"
        if type(metric) is Accuracy:
            predictions = predictions_of(labels)
            text += f" ({round(value * predictions)}/{predictions})"
        parts.append(text)
    loss = f"test loss {format_loss(figures['loss'])}"
    if target_scaler is not None:
        loss += " (standardized targets)"
    return ", ".join([*parts, loss])


def metrics_in_target_units(loss: str, target_scaler: dict | None) -> list[Metric] | None:
    """The metrics of a run whose targets were scaled by ``target_scaler`` (``Dataset.target_scaler``): the
    loss's own, with MAE reported in the target's units (times the scaler's scale; R² is the same for
    standardized targets). None (the loss's defaults) for targets as read."""
    if target_scaler is None:
        return None
    return [MAE(scale=target_scaler["scale"]) if type(metric) is MAE else metric
            for metric in LOSSES[loss]().default_metrics()]


def describe_target_scaler(target_scaler: dict) -> str:
    """The fitted target scaling in a few words: ``mean 1e+06 and standard deviation 1.34e+04``."""
    def listed(values):
        values = values if isinstance(values, list) else [values]
        return ", ".join(f"{v:.4g}" for v in values)
    return f"mean {listed(target_scaler['offset'])} and standard deviation {listed(target_scaler['scale'])}"


def predictions_of(labels: HostArray) -> int:
    """How many predictions accuracy counts over ``labels``: one per label, a label per step included."""
    return int(labels.size) if labels.dtype.kind in "iu" else len(labels)


def _silent(*_) -> None:
    pass


def _plots(output, history, model, x_test, dataset, log):
    try:
        # lazy: the plots module (and matplotlib behind it) only for a run that draws them
        from .plots.training import PlotUnavailable, confusion_matrix, plot_confusion_matrix, plot_learning_curves
    except ImportError:  # pragma: no cover
        return

    try:
        plot_learning_curves(history, output / "learning_curves.png", title=f"{dataset.name}")
        if dataset.y_test.ndim != 1 or dataset.y_test.dtype.kind not in "iu":
            return  # a confusion matrix is for one class per example
        predicted = model.backend.to_host(predict_classes(model, x_test))
        matrix = confusion_matrix(dataset.y_test, predicted, dataset.num_classes)
        plot_confusion_matrix(matrix, output / "confusion_matrix.png", class_names=dataset.class_names,
                              title=f"{dataset.name} test set")
    except PlotUnavailable as exc:
        warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
    except Exception as exc:  # a plot must never cost the user a finished, saved run
        warnings.warn(f"could not draw the plots in {output}: {exc}", RuntimeWarning, stacklevel=2)


def describe_model(model: Layer, name: str | None = None) -> str:
    """One line for logs: ``MLP 64-256-128-10 (...)`` for a stack of Dense layers and activations, otherwise
    the spec's name and the layer types in order."""
    layers = list(getattr(model, "layers", [model]))
    count = f"({model.num_parameters():,} parameters)"
    if name is None and all(isinstance(layer, (Dense, Activation, Dropout)) for layer in layers):
        dense = [layer for layer in layers if isinstance(layer, Dense)]
        if dense:
            sizes = [layer.in_features for layer in dense] + [dense[-1].out_features]
            return f"MLP {'-'.join(map(str, sizes))} {count}"
    return f"{name or 'model'}: {'-'.join(type(layer).__name__ for layer in layers)} {count}"


def checkpoint_model(path: Path, backend: Backend) -> Layer:
    """The model a checkpoint's architecture describes (its weights are loaded with the trainer's state)."""
    return model_from_state(read_checkpoint(path), backend, source=path)


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The model file that ``path`` (the file, or a run directory) names, checked to be readable."""
    path = Path(path)
    if path.is_dir():
        directory, path = path, path / MODEL_FILE
        if not path.exists() and (directory / CHECKPOINT_FILE).exists():
            raise ConfigError(f"{directory} holds an unfinished run ({CHECKPOINT_FILE}, no {MODEL_FILE} yet); "
                              f"finish it with: backprop train --resume {directory}")
    check_readable(path, "model file")
    return path


def check_readable(path: Path, what: str) -> None:
    """A ConfigError naming ``path`` when it exists but cannot be read (a missing file is left to its
    loader, which says so in its own words)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (cannot read the {what})") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a {what}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def check_writable_directory(path: str | os.PathLike, option: str) -> None:
    """A ConfigError unless the directory ``path`` can be written in, or created: checked before the data is
    loaded or a step is trained, so a run cannot be lost at its first checkpoint for want of permission."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the directory is not writable" if existing == path else f"cannot create it in {existing}"
        raise ConfigError(f"{option} {path}: permission denied ({where})")


def check_output_file(path: str | os.PathLike, option: str = "--output") -> None:
    """A ConfigError unless a file can be written at ``path``: checked before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; name a file, such as {path / 'predictions.csv'}")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: permission denied (cannot write in {parent})")


def resume_options(directory: Path, given: dict | None = None) -> dict:
    """The options to resume the run in ``directory`` with: the ones it was started with (from its checkpoint).

    ``given``: options the user typed along with ``--resume``. A resumed run must end exactly where the run
    would have ended without the interruption, so nothing that shapes the result may change: an option whose
    value differs from the run's raises a ``ConfigError`` that names each one. The exception is ``epochs``,
    which may grow (to extend a finished run) as long as the learning-rate schedule does not depend on it:
    a step or cosine schedule is laid out over the run's epochs, and stretching it would change learning
    rates the run has already used."""
    checkpoint = Path(directory) / CHECKPOINT_FILE
    check_readable(checkpoint, "checkpoint")
    if not checkpoint.exists():
        raise ConfigError(f"--resume {directory}: no {CHECKPOINT_FILE} there (nothing to resume)")
    state = read_checkpoint(checkpoint)

    recorded = dict(state.run)
    dataset_sha256 = recorded.pop("dataset_sha256", None)  # not an option: what the dataset file was
    recorded.setdefault("target_scaling", "none")  # a run from before targets were scaled: as read
    options = {**DEFAULTS, **recorded}
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown run option(s) {', '.join(unknown)}; expected {', '.join(DEFAULTS)}")
    changed = [key for key, value in given.items() if key != "epochs" and not _same_option(key, value, options[key])]
    if changed:
        listed = ", ".join(f"{_flag(key, given[key])} (the run has {_shown(key, options[key])})" for key in changed)
        raise ConfigError(f"--resume {directory} continues the run with the options it was started with, so "
                          f"{listed} cannot be given; leave {'it' if len(changed) == 1 else 'them'} out, or start "
                          f"a new run")
    if "epochs" in given and given["epochs"] != options["epochs"]:
        epochs, done = given["epochs"], state.epoch
        if isinstance(epochs, int) and epochs < done:
            raise ConfigError(f"--epochs {epochs} with --resume {directory}: the run has already trained {done} "
                              f"epochs; ask for at least that many")
        schedule = str(options["schedule"]).lower()
        if schedule in ("step", "cosine"):
            raise ConfigError(f"--epochs {epochs} with --resume {directory}: the run's {schedule} schedule is laid "
                              f"out over its {options['epochs']} epochs, and changing that would change learning "
                              f"rates it has already used; resume without --epochs, or start a new run")
        options["epochs"] = epochs
    if "dataset" not in given:
        check_recorded_dataset(options["dataset"], dataset_sha256, checkpoint, kind="checkpoint",
                               purpose="resume on it")
    elif dataset_sha256 is not None and file_sha256(options["dataset"]) != dataset_sha256:
        raise ConfigError(f"--dataset {options['dataset']} with --resume {directory}: not the file the run was "
                          f"trained on (its SHA-256 differs), and a resumed run must go on with the same data; "
                          f"start a new run to train on it")
    return options


def _canonical(key: str, value):
    """An option's value in the form that decides the run, so 256,128 and "256, 128" compare equal."""
    try:
        if key == "hidden":
            return tuple(parse_hidden(value))
        if key == "batch_size":
            return parse_batch_size(value)
    except ConfigError:
        return value
    if key in ("optimizer", "schedule", "activation") and isinstance(value, str):
        return value.lower().replace("-", "_")
    return value  # numbers compare by value: 0 == 0.0


def _same_option(key: str, a, b) -> bool:
    return _canonical(key, a) == _canonical(key, b)


def _flag(key: str, value) -> str:
    flag = "--" + key.replace("_", "-")
    return flag if isinstance(value, bool) else f"{flag} {value}"


def _shown(key: str, value) -> str:
    if value is None:
        return {"lr": "the optimizer's default", "clip_norm": "no clipping", "scaling": "the dataset's default",
                "target_scaling": "the task's default",
                "data_dir": "none"}.get(key, "none")
    if isinstance(value, bool):
        return "it on" if value else "it off"
    return str(value)


__all__ = ["DEFAULTS", "RUN_FILES", "build_model", "check_options", "claim_run_directory", "output_directory",
           "resume_options", "run_files", "train_run"]
