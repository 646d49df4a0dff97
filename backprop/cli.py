"""The ``backprop`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from backends import ENV_VAR, BackendError, BackendUnavailable, backend_statuses, get_backend, parse_spec, use_backend

from . import distributed, runs
from .data import apply_scaler, load_dataset, load_features, one_hot
from .data.loading import TASKS, check_recorded_dataset
from .data.scaling import checked_target_scaler, unscale
from .errors import BackpropError, ConfigError, ModelFileError, TrainingError
from .examples import EXAMPLES, run_example
from .io.atomic import write_text_atomic
from .io.directory_lock import refuse_if_locked
from .io.model_files import load_model, model_outputs
from .layers import architecture
from .layers.shape_inference import input_shape_of, shape_text
from .losses import LOSSES
from .runs import (
    CHECKPOINT_FILE,
    DEFAULTS,
    check_options,
    check_output_file,
    check_writable_directory,
    metrics_in_target_units,
    output_directory,
    resolve_model_path,
    resume_options,
    test_report,
)
from .specs import shipped_names
from .training import evaluate, predict_classes, predict_logits
from .training.interrupts import Terminated, exit_status, terminate_as_interrupt


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


BACKEND_HELP = (f"array library and device: numpy, cupy[:N], torch:cpu, torch:cuda:N, torch:mps, jax:cpu, "
                f"jax:cuda:N, array_api_strict, or auto (default: ${ENV_VAR}, else auto). Accepted before or after "
                f"the command; given in both places, the one after the command is used")


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options every command takes, before its name (``backprop --backend numpy train``) or after it
    (``backprop train --backend numpy``). After the command the default is SUPPRESS, so an option given only
    before it is not overwritten by the subcommand's default."""
    parser.add_argument("--backend", default=argparse.SUPPRESS if after_command else None, help=BACKEND_HELP)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the CLI's one-line form (``error: ...``, status 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backprop", description="Train neural networks by backpropagation on NumPy, CuPy or PyTorch.")
    _add_global_options(parser, after_command=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    backends_cmd = commands.add_parser("backends", help="list the array backends and whether each works here")
    backends_cmd.add_argument("--require", metavar="SPEC",
                              help="exit with status 1 unless this backend runs a real computation here")
    backends_cmd.set_defaults(handler=cmd_backends)
    _add_global_options(backends_cmd, after_command=True)

    # Every train option defaults to SUPPRESS: the namespace then holds exactly the options the user typed
    # (an explicitly typed default included), which --resume needs; the defaults come from DEFAULTS and
    # RUN_FLAGS afterwards, and the help shows them itself.
    train = commands.add_parser("train", help="train a network (default: a two-hidden-layer MLP on the digits)",
                                argument_default=argparse.SUPPRESS)
    d = DEFAULTS
    data = train.add_argument_group("data")
    data.add_argument("--dataset", help=f"digits (shipped with the package), mnist, fashion-mnist, adding-problem, "
                                        f"sonnets (sequences, for recurrent specs), or a .npz/.csv file "
                                        f"(default: {d['dataset']})")
    data.add_argument("--data-dir", metavar="DIR",
                      help="read the MNIST or Fashion-MNIST files from here instead of downloading")
    data.add_argument("--task", choices=["classification", "regression"],
                      help="classification: the file's last column (or y) is a class; regression: it is a number "
                           "to predict (loss mse, a linear output, metrics MAE and R²) "
                           f"(default: {d['task']})")
    data.add_argument("--scaling", choices=["none", "standardize", "minmax"],
                      help="feature scaling fitted on the training set (default: none for the built-in image "
                           "sets, standardize for your files)")
    data.add_argument("--target-scaling", choices=["none", "standardize"],
                      help="--task regression: standardize the targets (mean 0, standard deviation 1 per output, "
                           "fitted on the training set and saved with the model; MAE and predictions stay in the "
                           "target's units, the loss is that of standardized targets) or none (default: "
                           "standardize)")
    data.add_argument("--validation-split", type=float, metavar="FRACTION",
                      help=f"fraction of the training set held out for validation, 0 for none "
                           f"(default: {d['validation_split']})")
    model = train.add_argument_group("model")
    model.add_argument("--model", metavar="SPEC",
                       help="train the architecture of a spec instead of the MLP: a .toml or .json file listing the "
                            "layers, or a shipped spec (" + ", ".join(shipped_names()) + "); its [train] "
                            "table sets defaults for the other options (see backprop summary SPEC)")
    model.add_argument("--hidden", metavar="SIZES",
                       help=f"hidden layer sizes, comma-separated, or none for a linear model "
                            f"(default: {d['hidden']})")
    model.add_argument("--activation", help=f"relu, leaky_relu, gelu, tanh or sigmoid (default: {d['activation']})")
    model.add_argument("--dropout", type=float, metavar="P",
                       help=f"dropout probability after each hidden layer (default: {d['dropout']:g}, none)")
    opt = train.add_argument_group("optimization")
    opt.add_argument("--batch-size", metavar="N",
                     help=f"1 (stochastic), N (mini-batch) or full (one update per epoch) (default: {d['batch_size']})")
    opt.add_argument("--accumulate", type=int, metavar="N",
                     help=f"gradient accumulation: N batches of --batch-size per update, the same update as one "
                          f"batch N times larger, in the memory of one batch (default: {d['accumulate']})")
    opt.add_argument("--drop-last", action="store_true", help="drop the short last batch of each epoch (with "
                                                              "--accumulate, the short last update)")
    opt.add_argument("--loss", help=f"cross_entropy, mse or binary_cross_entropy (default: {d['loss']})")
    opt.add_argument("--optimizer", help=f"sgd, momentum, nesterov, adam, adamw, rmsprop or adagrad "
                                         f"(default: {d['optimizer']})")
    opt.add_argument("--lr", type=float, help="learning rate (default: the optimizer's own: 0.001 for adam and "
                                              "adamw, 0.01 for the others)")
    opt.add_argument("--weight-decay", type=float, help=f"L2 weight decay (default: {d['weight_decay']:g})")
    opt.add_argument("--schedule", help=f"learning-rate schedule: constant, step, exponential or cosine "
                                        f"(default: {d['schedule']})")
    opt.add_argument("--warmup-epochs", type=int, metavar="N",
                     help=f"epochs of linear learning-rate warm-up (default: {d['warmup_epochs']})")
    opt.add_argument("--clip-norm", type=float, metavar="NORM",
                     help="clip gradients to this global norm (default: no clipping)")
    opt.add_argument("--epochs", type=int, metavar="N", help=f"passes over the training set (default: {d['epochs']})")
    opt.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                     help=f"stop after PATIENCE epochs without validation improvement and keep the best "
                          f"weights (default: {d['early_stopping']}, off)")
    opt.add_argument("--seed", type=int, help=f"seed of the initial weights, shuffling and dropout "
                                              f"(default: {d['seed']})")
    opt.add_argument("--compile", action="store_true",
                     help="run each training step as one compiled program: jax.jit on JAX, torch.compile on "
                          "PyTorch (needs a C++ compiler on the CPU), CUDA Graph capture on CuPy")
    run = train.add_argument_group("output")
    run.add_argument("--output", metavar="DIR", help="directory for the model, history and plots "
                                                     "(default: a new runs/<dataset>-<date>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="allow --output to replace an earlier run")
    run.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its checkpoint, with the options it was started with; "
                          "only --epochs (to train longer), --no-progress, --no-plots, --distributed, --compile and "
                          "--backend may be given with it")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parallel = train.add_argument_group("distributed")
    parallel.add_argument("--distributed", action="store_true",
                          help="data-parallel training over MPI: launch with mpirun -n N backprop train "
                               "--distributed ... (pip install 'backprop[mpi]'); each rank trains on its shard of "
                               "every batch, gradients are averaged, only rank 0 writes files")
    train.set_defaults(handler=cmd_train)
    _add_global_options(train, after_command=True)

    evaluate = commands.add_parser("evaluate", help="the loss and metrics (accuracy; MAE and R² for a regression) of "
                                                    "a saved model on a dataset's test set")
    evaluate.add_argument("model", help="a model.safetensors file or a run directory")
    evaluate.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    evaluate.add_argument("--data-dir", default=None, metavar="DIR",
                          help="read the MNIST or Fashion-MNIST files from here instead of downloading")
    evaluate.set_defaults(handler=cmd_evaluate)
    _add_global_options(evaluate, after_command=True)

    predict = commands.add_parser("predict", help="predict the classes (or, for a regression, the values) of new "
                                                  "inputs with a saved model")
    predict.add_argument("model", help="a model.safetensors file or a run directory")
    predict.add_argument("input", help="a .npy, .npz (array 'x') or .csv file of feature rows")
    predict.add_argument("--output", default=None, metavar="FILE",
                         help="write the predictions to this CSV file (default: print them)")
    predict.set_defaults(handler=cmd_predict)
    _add_global_options(predict, after_command=True)

    summary = commands.add_parser(
        "summary", help="a model's layers, output shapes, parameter counts and memory (of a spec or a model file)")
    summary.add_argument("model", metavar="MODEL_OR_SPEC",
                         help="a model.safetensors file, a run directory, a spec file (.toml, .json) or a shipped spec")
    summary.add_argument("--dataset", default=None,
                         help="for a spec: the dataset whose shapes it is laid out for (default: the spec's own)")
    summary.add_argument("--data-dir", default=None, metavar="DIR",
                         help="read the MNIST or Fashion-MNIST files from here instead of downloading")
    summary.set_defaults(handler=cmd_summary)
    _add_global_options(summary, after_command=True)

    example = commands.add_parser(
        "example", help="run a worked example: " + ", ".join(EXAMPLES),
        description="\n".join(f"{name}: {text}" for name, (_, text) in EXAMPLES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    example.add_argument("name", choices=list(EXAMPLES), metavar="NAME", help=", ".join(EXAMPLES))
    example.add_argument("options", nargs=argparse.REMAINDER, help="the example's own options (see NAME --help)")
    example.set_defaults(handler=cmd_example)
    return parser


def cmd_example(args: argparse.Namespace) -> int:
    return run_example(args.name, args.options)


TRAIN_OPTIONS = tuple(DEFAULTS)
#: The train command's options that are not part of a run's recorded options, and their defaults.
RUN_FLAGS = {"output": None, "overwrite": False, "resume": None, "no_progress": False, "no_plots": False,
             "distributed": False, "compile": False}


def given_train_options(args: argparse.Namespace) -> dict:
    """The run options (``DEFAULTS``' keys) the user typed on the command line, whatever their value."""
    return {key: getattr(args, key) for key in TRAIN_OPTIONS if hasattr(args, key)}


def cmd_train(args: argparse.Namespace) -> int:
    for key, default in RUN_FLAGS.items():
        if not hasattr(args, key):
            setattr(args, key, default)

    with terminate_as_interrupt():  # SIGTERM (timeout, systemd, Slurm, Kubernetes) stops training like Ctrl-C
        if not args.distributed:
            return _train(args, None)

        communicator = distributed.world()  # through the module: tests replace it there
        if not communicator.is_root:
            warnings.simplefilter("ignore")  # rank 0 says it once; errors still show with their rank
        with communicator.abort_on_error():  # an error on one rank ends every rank, never a hang
            return _train(args, communicator)


def _train(args, communicator) -> int:
    root = communicator is None or communicator.is_root
    given = given_train_options(args)
    for flag, value in (("--output", args.output), ("--resume", args.resume), ("--data-dir", given.get("data_dir"))):
        _check_not_empty(flag, value)
    if args.resume:
        output = Path(args.resume)
        if args.output is not None and Path(args.output) != output:
            raise ConfigError(f"--output {args.output} and --resume {output}: a resumed run continues in its own "
                              f"directory; leave out --output")
        if args.overwrite:
            raise ConfigError(f"--overwrite and --resume {output}: resuming continues the run's files, it replaces "
                              f"nothing; leave out --overwrite")
        refuse_if_locked(output)  # a running run is not one to resume, whatever else is wrong
        options = resume_options(output, given)
        check_writable_directory(output, "--resume")
        check_options(options, resume=True)  # --epochs may have changed
    else:
        options = check_options(given)  # every option, before the output directory is named or anything written
        if root:
            output = output_directory(args.output, options["dataset"], args.overwrite)
            check_writable_directory(output, "--output")
        if communicator is not None:  # rank 0 names it (a new directory has the time in it), the others receive it
            output = communicator.broadcast_object(output if root else None)
    try:
        # through the module, like distributed.world: a test (or a caller) may replace it there
        runs.train_run(options, output=output, backend=args.backend, progress=not args.no_progress,
                       plots=not args.no_plots, resume=bool(args.resume), overwrite=args.overwrite,
                       communicator=communicator, compile=args.compile)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (Terminated)
        what = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        if root and (output / CHECKPOINT_FILE).exists():
            print(f"{what}: checkpoint saved; continue with: backprop train --resume {output}",
                  file=sys.stderr)
        elif root:
            print(f"{what} before the first epoch ended: no checkpoint to resume from", file=sys.stderr)
        status = exit_status(interrupt)
        if communicator is not None:
            communicator.end_interrupted(status=status)  # no rank may be left waiting in a collective
        return status
    except TrainingError:
        if not root:  # every rank stops at the same step; rank 0 says why
            return 2
        raise
    return 0


def _check_not_empty(flag: str, path) -> None:
    """An empty path is the current directory to the OS, and almost always an unset shell variable."""
    if path is not None and not str(path).strip():
        raise ConfigError(f"{flag} is empty; name a path (. for the current directory)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    path = resolve_model_path(args.model)
    model = load_model(path)
    metadata = dict(model.metadata)
    # the spec the model was trained with ("digits", or the path of the user's file), not its display name
    name = args.dataset or metadata.get("options", {}).get("dataset") or metadata.get("dataset")
    if not name:
        raise ConfigError(f"{path}: the model does not record its dataset; pass --dataset")
    if not args.dataset:  # a path the model file names is read only if it is the file the model was trained on
        check_recorded_dataset(name, metadata.get("dataset_sha256"), path)
    options = metadata.get("options", {})
    # Loading the same way as in training refits the scaling on the same training set: the same test features.
    # The targets are read as they are, and scaled with the model's own target scaler (the one it learned).
    dataset = load_dataset(name, data_dir=args.data_dir, scaling=options.get("scaling"),
                           seed=options.get("seed", 0), task=_recorded_task(path, metadata), target_scaling="none")
    loss_fn, y_test = _recorded_loss(path, metadata, dataset, model_outputs(model))
    target_scaler = _recorded_target_scaler(path, metadata)
    if target_scaler is not None and dataset.y_test.dtype.kind == "f":
        y_test = apply_scaler(y_test, target_scaler)
    backend = model.backend
    x_test, y_test = backend.from_host(dataset.x_test), backend.from_host(y_test)
    metrics = metrics_in_target_units(metadata.get("loss", "cross_entropy"), target_scaler) \
        or loss_fn.default_metrics()
    figures = evaluate(model, x_test, y_test, loss_fn, metrics=metrics)
    print(f"{path}: {test_report(figures, metrics, dataset.y_test, target_scaler)} on {dataset.name} with "
          f"{backend.name}")
    return 0


def _recorded_task(path, metadata: dict) -> str:
    """The task the model was trained for (models saved before tasks existed were classifiers)."""
    task = metadata.get("task", metadata.get("options", {}).get("task", "classification"))
    if task not in TASKS:
        raise ModelFileError(f"{path}: the model records an unknown task {task!r}; expected {' or '.join(TASKS)}")
    return task


def _recorded_target_scaler(path, metadata: dict) -> dict | None:
    """The scaling of the targets the model learned; None: it learned them as they are (as did every model
    saved before targets were scaled)."""
    return checked_target_scaler(metadata.get("target_scaler"), f"{path}: metadata entry 'target_scaler'")


def _recorded_loss(path, metadata: dict, dataset, outputs: int | None):
    """The loss the model was trained with, and the test targets in the form that loss takes."""
    # Model files record their loss since it became possible to train with another; every model saved before
    # that was trained with cross-entropy (the only loss `backprop train` used), so it is the right default.
    name = metadata.get("loss", "cross_entropy")
    if not isinstance(name, str) or name not in LOSSES:
        raise ModelFileError(f"{path}: the model records an unknown loss {name!r}; expected one of "
                             f"{', '.join(LOSSES)}")
    if name == "cross_entropy" or dataset.y_test.dtype.kind == "f":  # labels, or regression targets as they are
        return LOSSES[name](), dataset.y_test
    if name == "binary_cross_entropy" and outputs == 1:  # one logit of class 1: 0/1 labels as they are
        return LOSSES[name](), dataset.y_test
    # The other losses compare the scores with a target of the same shape: a class is its one-hot vector.
    return LOSSES[name](), one_hot(dataset.y_test, dataset.num_classes)


def _csv_field(text: str) -> str:
    """``text`` as one CSV field: quoted when it holds a comma, a quote or a line break (a name from a header)."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def cmd_predict(args: argparse.Namespace) -> int:
    if args.output is not None:
        _check_not_empty("--output", args.output)
        check_output_file(args.output)  # before the work, not after it
    path = resolve_model_path(args.model)
    model = load_model(path)
    metadata = dict(model.metadata)
    features = load_features(args.input)
    backend = model.backend
    expected = input_shape_of(architecture(model))
    if expected is not None and len(expected) == 1 and expected[0] is not None and features.shape[1] != expected[0]:
        raise ConfigError(f"{args.input}: rows have {features.shape[1]} features, the model expects {expected[0]}")
    if expected is not None and len(expected) > 1:
        raise ConfigError(f"{args.input}: the model takes inputs of shape {shape_text(expected)} per example, not "
                          f"rows of features (a model trained by backprop train takes rows)")
    features = apply_scaler(features, metadata.get("scaler") or {"kind": "none"})  # none: raw features
    if _recorded_task(path, metadata) == "regression":
        values = backend.to_host(predict_logits(model, backend.from_host(features)))
        target_scaler = _recorded_target_scaler(path, metadata)
        if target_scaler is not None:  # the model learned standardized targets: back to the target's units
            values = unscale(values, target_scaler, f"{path}: target_scaler")
        columns = metadata.get("target_names") or []  # the training file's target column, when it had a header
        if len(columns) != values.shape[1]:
            columns = ["value"] if values.shape[1] == 1 else [f"value_{j}" for j in range(values.shape[1])]
        # float32 outputs to their 7 digits; unscaled ones (float64, around a large mean, say) to 9
        digits = 7 if target_scaler is None else 9
        lines = ["index," + ",".join(map(_csv_field, columns))]
        lines += [f"{i}," + ",".join(f"{float(v):.{digits}g}" for v in row) for i, row in enumerate(values)]
        count = len(values)
    else:
        classes = backend.to_host(predict_classes(model, backend.from_host(features)))
        names = metadata.get("class_names") or [str(i) for i in range(int(classes.max()) + 1)]
        lines = ["index,class,name"] + [f"{i},{int(c)},{_csv_field(names[int(c)])}" for i, c in enumerate(classes)]
        count = len(classes)
    if args.output:
        write_text_atomic(args.output, "\n".join(lines) + "\n")
        print(f"wrote {count} prediction{'s' if count != 1 else ''} to {args.output}")
    else:
        print("\n".join(lines))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .summary import summarize  # lazy: only this command needs it, and every other command starts faster

    print(summarize(args.model, dataset=args.dataset, data_dir=args.data_dir))
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    if args.require:
        try:
            backend = get_backend(args.require)
        except BackendUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        with backend.activate():
            x = backend.asarray([1.0, 2.0, 3.0])
            total = float(backend.to_host(backend.xp.sum(x * x)))
        if total != 14.0:
            print(f"error: backend {backend.name} computed {total}, expected 14.0", file=sys.stderr)
            return 1
        print(f"{backend.name}: ok ({backend.device_name}, {backend.library} {backend.version})")
        return 0
    rows = backend_statuses()
    header = ("backend", "available", "device", "version", "reason")
    table = [header] + [(r.name, "yes" if r.available else "no", r.device_name or "-", r.version or "-",
                         r.reason or "") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
    default = args.backend or os.environ.get(ENV_VAR) or "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            chosen = get_backend(default).name
        except BackendError as exc:
            chosen = f"none ({exc})"
    print(f"\ndefault ({'--backend' if args.backend else ENV_VAR if os.environ.get(ENV_VAR) else 'auto'}): "
          f"{chosen}")
    return 0


def _run_command(args) -> int:
    try:
        return args.handler(args)
    except OSError as exc:  # a file the system refused (permission, a full disk, ...): say which, in one line
        where = f"{exc.filename}: " if exc.filename else ""
        raise ConfigError(f"{where}{exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.backend is None:
            return _run_command(args)
        if getattr(args, "distributed", False):  # each rank loads the backend on its own GPU (train_run)
            parse_spec(args.backend)  # a bad name is still an error before anything else
            return _run_command(args)

        with use_backend(args.backend):  # for this command only: main() called from Python leaves no trace
            return _run_command(args)
    except (BackpropError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print("terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted", file=sys.stderr)
        return exit_status(interrupt)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
