"""Build the wheelhouse that ``benchmarks/gpu_check.sh`` installs from on a GPU machine without network:
``benchmarks/build_wheelhouse.sh [DIR]`` (default ``wheelhouse/``), here, with network.

It resolves what the check installs (the project's dependencies, the test runner, the build backend) for this
interpreter, and downloads the pure-Python wheels among them (``*-none-any.whl``: any platform, any CPU).
The binary ones (NumPy, SciPy, safetensors, ...) and CuPy and PyTorch are expected on the GPU machine; it lists
them. ``--binaries`` downloads those too, for this platform and Python version (then run it with the GPU
machine's Python minor version: ``PYTHON=python3.12 benchmarks/build_wheelhouse.sh``). Markers are evaluated
for the interpreter that runs this, so use the GPU machine's Python minor version either way.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__:
    from .gpu_check import TEST_REQUIREMENTS
else:  # run as a script
    from gpu_check import TEST_REQUIREMENTS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "cupy-cuda12x", "cupy-cuda13x", "cupy"}  # the GPU machine brings its own, built for its CUDA


def requirements() -> list[str]:
    """What the GPU check installs: the project's dependencies, the test runner and the build backend."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [*project["project"]["dependencies"], *TEST_REQUIREMENTS, *project["build-system"]["requires"]]


def resolve(python: str, wanted: list[str]) -> list[dict]:
    """``[{"name", "version", "file"}]``: everything pip would install for ``wanted`` into an empty environment
    of ``python`` (nothing is installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), *wanted], check=True)
        items = json.loads(report.read_text())["install"]
    return [{"name": item["metadata"]["name"], "version": item["metadata"]["version"],
             "file": item["download_info"]["url"].rsplit("/", 1)[-1]} for item in items]


def is_pure(filename: str) -> bool:
    return filename.endswith("-none-any.whl")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/build_wheelhouse.sh", description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=str(ROOT / "wheelhouse"))
    parser.add_argument("--python", default=sys.executable, help="resolve for this interpreter (default: this one)")
    parser.add_argument("--binaries", action="store_true",
                        help="also the binary wheels (NumPy, SciPy, ...) for this platform and Python")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    found = [p for p in resolve(args.python, requirements()) if p["name"].lower() not in HEAVY]
    take = [p for p in found if args.binaries or is_pure(p["file"])]
    left = [p for p in found if p not in take]
    wheels = [f"{p['name']}=={p['version']}" for p in take if p["file"].endswith(".whl")]
    sources = [f"{p['name']}=={p['version']}" for p in take if not p["file"].endswith(".whl")]
    if wheels:
        subprocess.run([args.python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", str(directory), *wheels], check=True)
    for requirement in sources:  # an sdist: build its wheel; keep it only where it is pure (or asked for)
        subprocess.run([args.python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(directory),
                        requirement], check=True)
    if not args.binaries:
        for built in directory.glob("*.whl"):
            if not is_pure(built.name):
                built.unlink()
        for p in list(left):  # some packages publish a pure wheel beside their compiled ones (charset-normalizer)
            got = subprocess.run([args.python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                                  "--platform", "any", "--implementation", "py", "--abi", "none",
                                  "--dest", str(directory), f"{p['name']}=={p['version']}"], capture_output=True)
            if got.returncode == 0:
                left.remove(p)
    files = sorted(directory.glob("*.whl"))
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"{directory}: {len(files)} wheels, {size:.1f} MiB")
    if left:
        print("expected on the GPU machine already (binary; --binaries downloads them for this platform): "
              + ", ".join(f"{p['name']} {p['version']}" for p in left))
    print("and CuPy and PyTorch built for its CUDA. Then, there: benchmarks/gpu_check.sh " + str(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
