"""The ``backprop`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from backends import ENV_VAR, BackendError, BackendUnavailable, backend_statuses, get_backend

from .errors import BackpropError, ConfigError, TrainingError
from .runs import CHECKPOINT_FILE, DEFAULTS


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


BACKEND_HELP = (f"array library and device: numpy, cupy[:N], torch:cpu, torch:cuda:N, torch:mps, array_api_strict, "
                f"or auto (default: ${ENV_VAR}, else auto). Accepted before or after the command; given in both "
                f"places, the one after the command is used")


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options every command takes, before its name (``backprop --backend numpy train``) or after it
    (``backprop train --backend numpy``). After the command the default is SUPPRESS, so an option given only
    before it is not overwritten by the subcommand's default."""
    parser.add_argument("--backend", default=argparse.SUPPRESS if after_command else None, help=BACKEND_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backprop", description="Train neural networks by backpropagation on NumPy, CuPy or PyTorch.")
    _add_global_options(parser, after_command=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    backends_cmd = commands.add_parser("backends", help="list the array backends and whether each works here")
    backends_cmd.add_argument("--require", metavar="SPEC",
                              help="exit with status 1 unless this backend runs a real computation here")
    backends_cmd.set_defaults(handler=cmd_backends)
    _add_global_options(backends_cmd, after_command=True)

    train = commands.add_parser("train", help="train a network (default: a two-hidden-layer MLP on the digits)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    data = train.add_argument_group("data")
    data.add_argument("--dataset", default=d["dataset"],
                      help="digits (shipped with the package), mnist, fashion-mnist, or a .npz/.csv file")
    data.add_argument("--data-dir", default=None, help="read MNIST-style files from here instead of downloading")
    data.add_argument("--scaling", choices=["none", "standardize", "minmax"], default=None,
                      help="feature scaling fitted on the training set (default: none for images, "
                           "standardize for your files)")
    data.add_argument("--validation-split", type=float, default=d["validation_split"],
                      help="fraction of the training set held out for validation (0: none)")
    model = train.add_argument_group("model")
    model.add_argument("--hidden", default=d["hidden"], help="hidden layer sizes, comma-separated")
    model.add_argument("--activation", default=d["activation"], help="relu, leaky_relu, gelu, tanh or sigmoid")
    model.add_argument("--dropout", type=float, default=d["dropout"], help="dropout probability after each "
                                                                            "hidden layer")
    opt = train.add_argument_group("optimization")
    opt.add_argument("--batch-size", default=d["batch_size"],
                     help="1 (stochastic), N (mini-batch) or full (one update per epoch)")
    opt.add_argument("--drop-last", action="store_true", help="drop the short last batch of each epoch")
    opt.add_argument("--optimizer", default=d["optimizer"],
                     help="sgd, momentum, nesterov, adam, adamw, rmsprop or adagrad")
    opt.add_argument("--lr", type=float, default=d["lr"], help="learning rate (default: the optimizer's)")
    opt.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="L2 weight decay")
    opt.add_argument("--schedule", default=d["schedule"], help="constant, step, exponential or cosine")
    opt.add_argument("--warmup-epochs", type=int, default=d["warmup_epochs"], help="linear learning-rate warm-up")
    opt.add_argument("--clip-norm", type=float, default=d["clip_norm"], help="clip gradients to this global norm")
    opt.add_argument("--epochs", type=int, default=d["epochs"])
    opt.add_argument("--early-stopping", type=int, default=d["early_stopping"], metavar="PATIENCE",
                     help="stop after PATIENCE epochs without validation improvement and keep the best "
                          "weights (0: off)")
    opt.add_argument("--seed", type=int, default=d["seed"])
    run = train.add_argument_group("output")
    run.add_argument("--output", default=None, help="directory for the model, history and plots "
                                                    "(default: a new runs/<dataset>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="allow --output to replace an earlier model")
    run.add_argument("--resume", metavar="DIR", default=None,
                     help="continue the interrupted run in DIR from its checkpoint")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parallel = train.add_argument_group("distributed")
    parallel.add_argument("--distributed", action="store_true",
                          help="data-parallel training over MPI: launch with mpirun -n N backprop train "
                               "--distributed ... (pip install 'backprop[mpi]'); each rank trains on its shard of "
                               "every batch, gradients are averaged, only rank 0 writes files")
    train.set_defaults(handler=cmd_train)
    _add_global_options(train, after_command=True)

    evaluate = commands.add_parser("evaluate", help="accuracy of a saved model on a dataset's test set")
    evaluate.add_argument("model", help="a model.safetensors file or a run directory")
    evaluate.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    evaluate.add_argument("--data-dir", default=None)
    evaluate.set_defaults(handler=cmd_evaluate)
    _add_global_options(evaluate, after_command=True)

    predict = commands.add_parser("predict", help="predict the classes of new inputs with a saved model")
    predict.add_argument("model", help="a model.safetensors file or a run directory")
    predict.add_argument("input", help="a .npy, .npz (array 'x') or .csv file of feature rows")
    predict.add_argument("--output", default=None, help="write the predictions to this CSV file")
    predict.set_defaults(handler=cmd_predict)
    _add_global_options(predict, after_command=True)

    from .examples import EXAMPLES

    example = commands.add_parser(
        "example", help="run a worked example: " + ", ".join(EXAMPLES),
        description="\n".join(f"{name}: {text}" for name, (_, text) in EXAMPLES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    example.add_argument("name", choices=list(EXAMPLES), metavar="NAME", help=", ".join(EXAMPLES))
    example.add_argument("options", nargs=argparse.REMAINDER, help="the example's own options (see NAME --help)")
    example.set_defaults(handler=cmd_example)
    return parser


def cmd_example(args) -> int:
    from .examples import run_example

    return run_example(args.name, args.options)


TRAIN_OPTIONS = tuple(DEFAULTS)


def cmd_train(args) -> int:
    if not args.distributed:
        return _train(args, None)
    from .distributed import world

    communicator = world()
    if not communicator.is_root:
        warnings.simplefilter("ignore")  # rank 0 says it once; errors still show with their rank
    with communicator.abort_on_error():  # an error on one rank ends every rank, never a hang
        return _train(args, communicator)


def _train(args, communicator) -> int:
    from pathlib import Path

    from .runs import output_directory, resume_options, train_run

    root = communicator is None or communicator.is_root
    if args.resume:
        output = Path(args.resume)
        options = resume_options(output)
        given = {key: getattr(args, key) for key in TRAIN_OPTIONS
                 if getattr(args, key) != DEFAULTS[key] and key != "dataset"}
        options.update({k: v for k, v in given.items() if k == "epochs"})  # only more epochs may be asked for
    else:
        options = {key: getattr(args, key) for key in TRAIN_OPTIONS}
        output = output_directory(args.output, args.dataset, args.overwrite) if root else None
        if communicator is not None:
            output = communicator.broadcast_object(output)  # rank 0 names it (a new directory has the time in it)
    try:
        train_run(options, output=output, progress=not args.no_progress, plots=not args.no_plots,
                  resume=bool(args.resume), communicator=communicator)
    except KeyboardInterrupt:
        if root and (output / CHECKPOINT_FILE).exists():
            print(f"interrupted: checkpoint saved; continue with: backprop train --resume {output}",
                  file=sys.stderr)
        elif root:
            print("interrupted before the first epoch ended: no checkpoint to resume from", file=sys.stderr)
        if communicator is not None:
            communicator.end_interrupted()  # no rank may be left waiting in a collective
        return 130
    except TrainingError:
        if not root:  # every rank stops at the same step; rank 0 says why
            return 2
        raise
    return 0


def cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .host_io.model_files import load_model
    from .losses import CrossEntropy
    from .runs import resolve_model_path
    from .training import evaluate

    path = resolve_model_path(args.model)
    model, metadata = load_model(path)
    # the spec the model was trained with ("digits", or the path of the user's file), not its display name
    name = args.dataset or metadata.get("options", {}).get("dataset") or metadata.get("dataset")
    if not name:
        raise ConfigError(f"{path}: the model does not record its dataset; pass --dataset")
    options = metadata.get("options", {})
    # Loading the same way as in training refits the scaling on the same training set: the same test features.
    dataset = load_dataset(name, data_dir=args.data_dir, scaling=options.get("scaling"),
                           seed=options.get("seed", 0))
    backend = model.backend
    x_test, y_test = backend.from_host(dataset.x_test), backend.from_host(dataset.y_test)
    loss, accuracy = evaluate(model, x_test, y_test, CrossEntropy())
    print(f"{path}: test accuracy {100 * accuracy:.2f}% ({round(accuracy * len(dataset.y_test))}/"
          f"{len(dataset.y_test)}), test loss {loss:.4f} on {dataset.name} with {backend.name}")
    return 0


def cmd_predict(args) -> int:
    from .data import apply_scaler, load_features
    from .host_io.atomic import write_text_atomic
    from .host_io.model_files import load_model
    from .runs import resolve_model_path
    from .training import predict_classes

    path = resolve_model_path(args.model)
    model, metadata = load_model(path)
    features = apply_scaler(load_features(args.input), metadata.get("scaler"))
    backend = model.backend
    expected = model.layers[0].in_features if hasattr(model.layers[0], "in_features") else None
    if expected is not None and features.shape[1] != expected:
        raise ConfigError(f"{args.input}: rows have {features.shape[1]} features, the model expects {expected}")
    classes = backend.to_host(predict_classes(model, backend.from_host(features)))
    names = metadata.get("class_names") or [str(i) for i in range(int(classes.max()) + 1)]
    lines = ["index,class,name"] + [f"{i},{int(c)},{names[int(c)]}" for i, c in enumerate(classes)]
    if args.output:
        write_text_atomic(args.output, "\n".join(lines) + "\n")
        print(f"wrote {len(classes)} predictions to {args.output}")
    else:
        print("\n".join(lines))
    return 0


def cmd_backends(args) -> int:
    if args.require:
        try:
            backend = get_backend(args.require)
        except BackendUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
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


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.backend is None:
            return args.handler(args)
        from backends import use_backend

        with use_backend(args.backend):  # for this command only: main() called from Python leaves no trace
            return args.handler(args)
    except (BackpropError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
