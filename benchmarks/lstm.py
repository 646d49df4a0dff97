"""The LSTM workload: sequence regression with an LSTM and a Dense head, against PyTorch's nn.LSTM.

Batch 64, 50 steps, 32 input features, 128 hidden units, MSE on the last state, plain SGD; 2,048 synthetic
sequences per epoch. There is no hand-written NumPy LSTM contender: the per-step loop is the same code
either way, so the comparison that matters is with PyTorch's fused cell (on the CPU, oneDNN's LSTM).

Part of ``python -m benchmarks``; on its own (with the same table and files)::

    python -m benchmarks.lstm                     # numpy and torch:cpu against nn.LSTM, 2,048 sequences
    python -m benchmarks.lstm --threads 1 --name lstm_cpu_1thread
"""

from __future__ import annotations

import numpy as np

import backprop as bp

from . import torch_peer
from .timing import interleaved

BATCH, STEPS, FEATURES, HIDDEN, SEQUENCES, LR = 64, 50, 32, 128, 2048, 0.01


def flops_per_epoch(sequences: int = SEQUENCES) -> float:
    """Multiply-adds x2 of the matrix products, per example and step: forward x W_ih and h W_hh, backward the
    gradients of W_ih, W_hh and h (none for the input x: neither contender computes it)."""
    gates = 4 * HIDDEN
    return 2.0 * gates * (2 * FEATURES + 3 * HIDDEN) * STEPS * sequences


def run(backends, *, repeats, include_torch=True, log=print, sequences: int = SEQUENCES):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(sequences, STEPS, FEATURES)).astype(np.float32)
    y = x[:, :, 0].mean(axis=1, keepdims=True).astype(np.float32)
    runs = {}
    for backend in backends:
        model = bp.Sequential([bp.layers.LSTM(FEATURES, HIDDEN, return_sequences=False, rng=0, backend=backend),
                               bp.Dense(HIDDEN, 1, rng=1, backend=backend)])
        trainer = bp.Trainer(model, loss="mse", optimizer="sgd", lr=LR, epochs=10**9, batch_size=BATCH,
                             progress=False, log=None)
        xd, yd = backend.from_host(x), backend.from_host(y)

        def ours(trainer=trainer, xd=xd, yd=yd, backend=backend):
            trainer.train_epoch(xd, yd)
            backend.synchronize()

        runs[f"backprop[{backend.name}]"] = ours
    torch = torch_peer.optional_torch(include_torch)
    if torch is not None:
        for device in torch_peer.torch_devices(torch):
            lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True).to(device)
            head = torch.nn.Linear(HIDDEN, 1).to(device)
            params = list(lstm.parameters()) + list(head.parameters())
            optimizer = torch.optim.SGD(params, lr=LR)
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            generator = torch.Generator(device=device).manual_seed(0)

            def torch_run(lstm=lstm, head=head, optimizer=optimizer, xt=xt, yt=yt, generator=generator,
                          device=device):
                order = torch.randperm(sequences, generator=generator, device=xt.device)
                for start in range(0, sequences, BATCH):
                    index = order[start:start + BATCH]
                    optimizer.zero_grad(set_to_none=True)
                    out, _ = lstm(xt.index_select(0, index))
                    loss = torch.nn.functional.mse_loss(head(out[:, -1]), yt.index_select(0, index))
                    loss.backward()
                    optimizer.step()
                if device == "cuda":
                    torch.cuda.synchronize()

            runs[f"pytorch[{device}]"] = torch_run
    log(f"lstm: {len(runs)} contenders, {repeats} rounds")
    timed = interleaved(runs, repeats=repeats)
    results = []
    for name, t in timed.items():
        results.append({"workload": f"lstm {FEATURES}-{HIDDEN}, {STEPS} steps", "batch_size": BATCH,
                        "contender": name, "seconds_per_epoch": t["median"], "extrapolated": False,
                        "samples_timed": sequences, "runs": t["runs"],
                        "gflops": flops_per_epoch(sequences) / t["median"] / 1e9})
        log(f"  {name:<28} {t['median']:8.3f} s/epoch")
    return results


def main(argv=None) -> int:
    import argparse
    import time
    import warnings
    from pathlib import Path

    from . import machine, report

    parser = argparse.ArgumentParser(prog="python -m benchmarks.lstm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="numpy,torch:cpu", help="our backends to time")
    parser.add_argument("--sequences", type=int, default=SEQUENCES, help=f"sequences per epoch ({SEQUENCES})")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for NumPy's BLAS and PyTorch (default: the cores this process may use)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--name", default="lstm_cpu", help="file names: NAME.json and NAME.md")
    args = parser.parse_args(argv)
    if args.sequences < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--sequences, --repeats and --threads must be positive integers")
    backends = []
    for spec in args.backends.split(","):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                backends.append(bp.get_backend(spec.strip()))
        except Exception as exc:
            print(f"skipping {spec}: {str(exc).split('. Available')[0]}")
    threads = args.threads or machine.available_cores()
    with machine.limited_threads(threads):
        run_record = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine.describe(backends),
                      "settings": vars(args), "memory": [],
                      "results": run(backends, repeats=args.repeats, include_torch=not args.no_torch,
                                     sequences=args.sequences)}
    json_path, md_path = report.write(run_record, Path(args.output), args.name)
    print(report.markdown(run_record))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
