"""The command line's options as a user types them: where they go, what --resume accepts, what is checked
before anything is written, and the one-line errors that replace tracebacks.

Most tests call ``backprop.cli.main`` in-process (fast); the few that need another user's file permissions run
the CLI in a subprocess.
"""

from __future__ import annotations

import json

import pytest

from backprop.cli import main

QUICK = ["--epochs", "1", "--hidden", "8", "--no-plots", "--no-progress"]


def one_error_line(capsys) -> str:
    """The single ``error:`` line the CLI printed (and nothing that looks like a traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------ global options anywhere


@pytest.mark.parametrize("argv, expected", [
    (["train", "--backend", "array_api_strict"], "array_api_strict"),
    (["--backend", "array_api_strict", "train"], "array_api_strict"),
    (["--backend", "numpy", "train", "--backend", "array_api_strict"], "array_api_strict"),  # after wins
    (["--backend", "array_api_strict", "train", "--backend", "numpy"], "numpy"),
])
def test_backend_is_accepted_before_and_after_the_command(argv, expected, tmp_path):
    out = tmp_path / "run"
    assert main([*argv, *QUICK, "--output", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["backend"] == expected


def test_backend_after_evaluate_and_backends(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--backend", "array_api_strict"]) == 0
    assert "with array_api_strict" in capsys.readouterr().out
    assert main(["backends", "--backend", "array_api_strict"]) == 0
    assert "default (--backend): array_api_strict" in capsys.readouterr().out


def test_main_leaves_the_current_backend_as_it_was(tmp_path):
    from backends import current_backend

    before = current_backend()
    assert main(["backends", "--backend", "array_api_strict"]) == 0
    assert current_backend() is before
