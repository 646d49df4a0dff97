"""The ``backprop`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from backends import ENV_VAR, BackendError, BackendUnavailable, backend_statuses, get_backend

from .errors import BackpropError


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backprop", description="Train neural networks by backpropagation on NumPy, CuPy or PyTorch.")
    parser.add_argument("--backend", default=None,
                        help=f"array library and device: numpy, cupy[:N], torch:cpu, torch:cuda:N, torch:mps, "
                             f"array_api_strict, or auto (default: ${ENV_VAR}, else auto)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    backends_cmd = commands.add_parser("backends", help="list the array backends and whether each works here")
    backends_cmd.add_argument("--require", metavar="SPEC",
                              help="exit with status 1 unless this backend runs a real computation here")
    backends_cmd.set_defaults(handler=cmd_backends)
    return parser


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
        if args.backend is not None:
            from backends import set_backend

            set_backend(args.backend)
        return args.handler(args)
    except (BackpropError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
