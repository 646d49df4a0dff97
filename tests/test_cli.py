"""The command line: `backprop backends` and error handling."""

from __future__ import annotations

import subprocess
import sys

import pytest

from backprop.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "backprop", *args], capture_output=True, text=True, env=env)


def test_backends_table_lists_every_backend_and_explains_unavailable_ones():
    result = run_cli("backends")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["backend", "available", "device", "version"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip() and not line.startswith("default")}
    assert "yes" in rows["numpy"].split()
    cupy_rows = [row for name, row in rows.items() if name.startswith("cupy")]
    assert cupy_rows
    for row in cupy_rows:
        if " no " in row:
            assert "CuPy" in row or "CUDA" in row or "GPU" in row  # the reason is printed
    assert "Traceback" not in result.stderr


def test_require_runs_a_real_computation(capsys):
    assert main(["backends", "--require", "numpy"]) == 0
    assert "numpy: ok" in capsys.readouterr().out


def test_require_unavailable_backend_fails_with_reason(capsys):
    assert main(["backends", "--require", "cupy:99"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: backend 'cupy:99' is unavailable") and err.count("\n") == 1


@pytest.mark.parametrize("args", [["--backend", "tensorflow", "backends", "--require", "numpy"]])
def test_bad_backend_flag_is_a_usage_error(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'tensorflow'" in err and "Traceback" not in err


def test_backend_flag_overrides_environment(capsys, monkeypatch):
    monkeypatch.setenv("BACKPROP_BACKEND", "array_api_strict")
    assert main(["--backend", "numpy", "backends"]) == 0
    assert "default (--backend): numpy" in capsys.readouterr().out
