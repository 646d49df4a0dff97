#!/usr/bin/env bash
# The project's GPU check, for a machine with one NVIDIA GPU and no network (benchmarks/gpu_check.py says what
# it runs): benchmarks/gpu_check.sh [WHEELHOUSE] [--budget S] [--stages a,b,...]
# WHEELHOUSE (or $BACKPROP_WHEELHOUSE): the wheels of the pure-Python dependencies, from
# benchmarks/build_wheelhouse.sh. $PYTHON: the interpreter that has CuPy and PyTorch (default: python3).
set -u
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
