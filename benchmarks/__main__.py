"""``python -m benchmarks``: time this library against hand-written NumPy and PyTorch, write JSON + Markdown."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import backprop as bp

from . import cnn_vs_torch, fit, lstm, machine, memory, mlp, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--workloads", default="mlp,cnn,lstm,fit,memory",
                        help="comma-separated: mlp, cnn, lstm, fit, memory")
    parser.add_argument("--cnn-images", type=int, default=60_000, help="images per CNN epoch")
    parser.add_argument("--memory-samples", type=int, default=60_000, help="examples in the memory measurement")
    parser.add_argument("--backends", default="numpy,torch:cpu,cupy:0,torch:cuda:0",
                        help="our backends to time (unavailable ones are left out with a note)")
    parser.add_argument("--batch-sizes", default="1,32,128,1024")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--max-steps", type=int, default=2000,
                        help="at most this many steps per timing (small batches are timed on part of an epoch)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--fit-epochs", type=int, default=fit.EPOCHS, help="epochs of the fit workload")
    parser.add_argument("--matmul-size", type=int, default=machine.MATMUL_SIZE,
                        help="side of the square matrices of the matrix-multiply peak")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for NumPy's BLAS and PyTorch (default: the cores this process may use)")
    parser.add_argument("--output", default="benchmarks/results", help="directory for the JSON and Markdown")
    parser.add_argument("--name", default=None, help="file name stem (default: run-<date>-<time>)")
    args = parser.parse_args(argv)

    backends = []
    for spec in args.backends.split(","):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                backends.append(bp.get_backend(spec.strip()))
        except bp.BackpropError as exc:  # pragma: no cover - depends on the machine
            print(f"skipping {spec}: {exc}")
        except Exception as exc:
            print(f"skipping {spec}: {str(exc).split('. Available')[0]}")
    threads = args.threads or machine.available_cores()
    with machine.limited_threads(threads):  # and back as they were after the run (the smoke test runs in pytest)
        run = measure(args, backends, threads)
    json_path, md_path = report.write(run, Path(args.output), args.name)
    print(f"wrote {json_path} and {md_path}")
    print(report.markdown(run))
    return 0


def measure(args, backends, threads: int) -> dict:
    """Every workload of ``args`` on ``backends``: the run's figures (what ``report.write`` writes)."""
    run = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine.describe(backends),
           "settings": vars(args), "results": [], "memory": []}
    run["matmul_size"] = args.matmul_size
    run["matmul_peak_gflops"] = {b.name: machine.matmul_peak_gflops(b, args.matmul_size) for b in backends}
    print("matmul peak:", ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in run["matmul_peak_gflops"].items()))
    workloads = {w.strip() for w in args.workloads.split(",")}
    if "mlp" in workloads:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        run["results"] += mlp.run(backends, batch_sizes, repeats=args.repeats, max_steps=args.max_steps,
                                  include_torch=not args.no_torch)
    if "cnn" in workloads and not args.no_torch:
        cnn = cnn_vs_torch.run(cnn_vs_torch.build_parser().parse_args(
            ["--images", str(args.cnn_images), "--repeats", str(args.repeats), "--threads", str(threads)]))
        run["cnn"] = cnn
        for name, contender in (("ours (numpy)", "backprop[numpy]"), ("torch (cpu)", "pytorch[cpu]")):
            run["results"].append({"workload": "cnn 1x28x28 conv8-conv16-dense10", "batch_size": 128,
                                   "contender": contender, "seconds_per_epoch": cnn["median_seconds"][name],
                                   "extrapolated": args.cnn_images < 60_000, "runs": cnn["epoch_seconds"][name]})
    if "lstm" in workloads:
        run["results"] += lstm.run(backends, repeats=args.repeats, include_torch=not args.no_torch)
    if "fit" in workloads:
        run["results"] += fit.run(backends, repeats=max(1, args.repeats // 2), epochs=args.fit_epochs,
                                  include_torch=not args.no_torch)
    if "memory" in workloads:
        for backend in backends:
            if backend.library in ("numpy",):
                run["memory"].append(memory.measure(backend.name, samples=args.memory_samples))
    # The peak again at the end: the best of both, as another job on a shared machine can depress either.
    for b in backends:
        run["matmul_peak_gflops"][b.name] = max(run["matmul_peak_gflops"][b.name],
                                                machine.matmul_peak_gflops(b, args.matmul_size))
    return run


if __name__ == "__main__":
    raise SystemExit(main())
