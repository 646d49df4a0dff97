#!/usr/bin/env bash
# Build the wheelhouse of pure-Python dependencies that benchmarks/gpu_check.sh installs from on a GPU machine
# without network (benchmarks/wheelhouse.py says what goes in): benchmarks/build_wheelhouse.sh [DIR] [--binaries]
# $PYTHON: resolve for this interpreter (default: python3); use the GPU machine's Python minor version.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/wheelhouse.py "$@"
