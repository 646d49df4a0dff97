"""The recurrent examples, run end to end with tiny settings: ``backprop example adding`` and ``char-lm``."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import numpy as np
import pytest

from backprop.cli import main as cli_main
from backprop.data.sequences import adding_problem as make_adding_problem
from backprop.data.sequences import load_text
from backprop.examples import adding_problem, char_lm

TINY_ADDING = ["--length", "8", "--train", "128", "--val", "64", "--epochs", "2", "--hidden", "6", "--batch-size",
               "32", "--probe", "16", "--backend", "numpy"]
TINY_CHAR_LM = ["--max-chars", "3000", "--epochs", "1", "--seq-len", "16", "--hidden", "12", "--batch-size", "32",
                "--sample-length", "40", "--prompt", "From", "--backend", "numpy"]


def test_adding_problem_data():
    x, y = make_adding_problem(500, 10, seed=3)
    assert x.shape == (500, 10, 2) and y.shape == (500, 1) and x.dtype == y.dtype == np.float32
    markers = x[:, :, 1]
    assert np.all(markers.sum(axis=1) == 2)
    assert np.all(markers[:, :5].sum(axis=1) == 1)  # one marker in each half
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=1), rtol=1e-6)
    assert abs(float(((y - 1.0) ** 2).mean()) - 1 / 6) < 0.03
    np.testing.assert_array_equal(make_adding_problem(500, 10, seed=3)[0], x)


def test_adding_example_compares_the_cells(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "gradients.png"
    assert adding_problem.main(TINY_ADDING + ["--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "baseline: always predicting 1.0 gives validation MSE" in out
    assert "|dL/dh_1|/|dL/dh_T|" in out
    for cell in ("rnn", "lstm", "gru"):
        assert f"  {cell:4s} epoch 2/2" in out
        assert f"\n{cell}: val MSE " in out
    assert "t=1" in out and "t=8" in out
    assert plot.stat().st_size > 1000 and plot.read_bytes().startswith(b"\x89PNG")


def test_adding_example_through_the_cli(capsys):
    assert cli_main(["example", "adding", *TINY_ADDING, "--cells", "gru", "--no-plot", "--quiet",
                     "--bptt-steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "gru: val MSE" in out and "rnn:" not in out and "gru  epoch" not in out


def test_adding_example_rejects_bad_options(capsys):
    assert cli_main(["example", "adding", "--cells", "rnn,transformer"]) == 2
    assert "--cells: expected a comma-separated list of rnn, lstm, gru" in capsys.readouterr().err
    assert cli_main(["example", "adding", "--length", "1"]) == 2
    assert "--length must be at least 2" in capsys.readouterr().err


def test_packaged_text():
    text = load_text("sonnets")
    assert len(text) == 95728 and text.startswith("THE SONNETS\nby William Shakespeare")
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55")
    raw = resources.files("backprop.data").joinpath("sonnets.txt.gz").read_bytes()
    assert gzip.decompress(raw).decode() == text


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_lm_example_trains_and_samples(cell, capsys):
    assert char_lm.main(TINY_CHAR_LM + ["--cell", cell]) == 0
    out = capsys.readouterr().out
    assert "unigram model (character frequencies):" in out
    assert "held-out loss (epoch 1, the best):" in out and "bits per character" in out
    assert "sample (temperature 0.7):" in out
    sample = out.split("-" * 60 + "\n")[1].rstrip("\n")
    assert sample.startswith("From") and len(sample) == len("From") + 40


def test_char_lm_through_the_cli_greedy_sampling(capsys):
    argv = ["example", "char-lm", *TINY_CHAR_LM, "--temperature", "0", "--quiet", "--bptt-steps", "8"]
    assert cli_main(argv) == 0
    first = capsys.readouterr().out
    assert cli_main(argv) == 0
    assert capsys.readouterr().out.split("-" * 60)[1] == first.split("-" * 60)[1]  # seeded: the same text


def test_char_lm_rejects_bad_options(capsys):
    assert cli_main(["example", "char-lm", "--prompt", "héllo"]) == 2
    assert "'é' do not occur" in capsys.readouterr().err
    assert cli_main(["example", "char-lm", "--temperature", "-1"]) == 2
    assert "--temperature must be a finite number >= 0" in capsys.readouterr().err
