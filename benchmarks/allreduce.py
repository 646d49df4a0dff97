"""The gradient all-reduce of data-parallel training, measured on 1, 2 and 4 local MPI ranks (CPU).

    python -m benchmarks.allreduce                    # ranks 1,2,4 (about a minute on 2 cores)
    python -m benchmarks.allreduce --ranks 1,2 --repeats 50

The gradient is that of the MLP 784-512-512-10 (669,706 float32, 2.68 MB). For each number of ranks N,
``mpirun -n N`` (the MPI beside this Python: the MPICH wheel of the ``mpi`` extra) runs this module as a
worker on every rank, one BLAS thread per rank, and measures per step:

* ``mpi``: ``MPI_Allreduce`` (sum, in place) of one NumPy buffer of the gradient's size: the communication;
* ``gradient path``: ``Communicator.allreduce_gradients`` as the trainer calls it: pack the six gradient
  arrays into one weighted buffer on the device, copy it to the host, ``MPI_Allreduce``, copy back, unpack;
* ``train step``: a whole data-parallel step of ``Trainer`` (global batch ``--batch-size``, each rank its
  shard: forward, backward, the all-reduce, Adam), from the trainer's own epoch clock.

Each timed call starts after a barrier; a step costs what the slowest rank took, so the figure per call is
the maximum over ranks, and the table shows the median (and 10th/90th percentiles) over the calls. The
single-process compute time per step (the same ``Trainer`` without a communicator, 1 thread and all cores)
is measured too, for the model t(N) = t_compute / N + t_allreduce(N) in the README.

With more ranks than cores (4 ranks on a 2-core machine) the ranks take turns on the cores and MPICH's
waiting ranks spin: those figures show oversubscription, not the network.

Writes ``benchmarks/results/allreduce_cpu.json`` and ``.md`` (``--name``, ``--output-dir`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import report

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
SIZES = [784, 512, 512, 10]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.allreduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,2,4", help="numbers of local ranks to measure (default 1,2,4)")
    parser.add_argument("--repeats", type=int, default=200, help="timed all-reduces per measurement (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed all-reduces first (default 20)")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch of the train-step timing")
    parser.add_argument("--train-steps", type=int, default=40, help="steps per timed epoch (default 40)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after one warm-up (default 5)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed for one mpirun")
    parser.add_argument("--output-dir", default=str(RESULTS))
    parser.add_argument("--name", default="allreduce_cpu")
    parser.add_argument("--worker", choices=["ranks", "compute"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


# -- on every rank ----------------------------------------------------------------------------------------------
def _percentiles(values: list[float]) -> dict:
    ordered = sorted(values)

    def at(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"median": statistics.median(ordered), "p10": at(0.1), "p90": at(0.9), "min": ordered[0],
            "calls": len(ordered)}


def _timed(communicator, call, repeats: int, warmup: int) -> dict:
    """Seconds per call: the slowest rank's time of each call (barrier before each), summarized."""
    times = []
    for i in range(warmup + repeats):
        communicator.barrier()
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    per_rank = communicator.comm.allgather(times)
    return _percentiles([max(column) for column in zip(*per_rank)])


def _data(batch_size: int, steps: int):
    import numpy as np

    rng = np.random.default_rng(0)
    n = batch_size * steps
    return rng.normal(size=(n, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], size=n)


def _epoch_times(trainer, x, y, epochs: int, communicator=None) -> list[float]:
    trainer.train_epoch(x, y)  # warm-up
    times = []
    for _ in range(epochs):
        seconds = trainer.train_epoch(x, y)["time"]
        if communicator is not None:
            seconds = max(communicator.comm.allgather(seconds))
        times.append(seconds)
    return times


def worker_ranks(args) -> None:
    import numpy as np
    from mpi4py import MPI

    import backprop as bp
    from backprop.distributed import world

    communicator = world()
    backend = bp.get_backend("numpy")
    model = bp.mlp(SIZES, seed=0, backend=backend)
    elements = model.num_parameters()

    buffer = np.ones(elements, dtype=np.float32)
    mpi = _timed(communicator, lambda: communicator.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM),
                 args.repeats, args.warmup)

    rng = np.random.default_rng(communicator.rank)
    loss = bp.CrossEntropy()
    x = backend.from_host(rng.normal(size=(64, SIZES[0])))
    logits, backprop = model.begin_update(x, training=True)
    backprop(loss.value_and_grad(logits, backend.from_host(rng.integers(0, 10, size=64)))[1])
    # weight 1/N: every call averages the gradients, so their values stay put however many calls
    path = _timed(communicator, lambda: communicator.allreduce_gradients(model, 1 / communicator.size),
                  args.repeats, args.warmup)

    x, y = _data(args.batch_size, args.train_steps)
    trainer = bp.Trainer(bp.mlp(SIZES, seed=0, backend=backend), optimizer="adam", batch_size=args.batch_size,
                         progress=False, log=None, communicator=communicator)
    communicator.broadcast_parameters(trainer.model)
    epochs = _epoch_times(trainer, backend.from_host(x), backend.from_host(y), args.epochs, communicator)
    step = _percentiles([t / args.train_steps for t in epochs])
    if communicator.is_root:
        result = {"ranks": communicator.size, "elements": elements, "bytes": elements * 4,
                  "mpi_library": " ".join(MPI.Get_library_version().splitlines()[0].split()),
                  "mpi_allreduce_s": mpi, "gradient_path_s": path, "train_step_s": step,
                  "train_epochs_s": epochs}
        Path(args.out).write_text(json.dumps(result))


def worker_compute(args) -> None:
    """One process, no MPI: the plain trainer's time per step (threads from the environment)."""
    import backprop as bp

    backend = bp.get_backend("numpy")
    x, y = _data(args.batch_size, args.train_steps)
    trainer = bp.Trainer(bp.mlp(SIZES, seed=0, backend=backend), optimizer="adam", batch_size=args.batch_size,
                         progress=False, log=None)
    epochs = _epoch_times(trainer, backend.from_host(x), backend.from_host(y), args.epochs)
    Path(args.out).write_text(json.dumps({"train_step_s": _percentiles([t / args.train_steps for t in epochs]),
                                          "threads": os.environ.get("OMP_NUM_THREADS")}))


# -- the model on paper ------------------------------------------------------------------------------------------
# Assumptions for machines we could not measure (stated in the README): effective bandwidth for a 2.7 MB
# all-reduce and latency per ring hop.
NVLINK = {"name": "8 GPUs over NVLink (one machine, NCCL)", "bandwidth_bytes_s": 100e9, "latency_s": 3e-6,
          "note": "H100/A100 NVLink: ~450/300 GB/s per direction, but NCCL reaches ~100 GB/s of bus bandwidth on "
                  "a message as small as 2.7 MB; 3 us per ring hop"}
NETWORK = {"name": "hosts over 100 Gb/s Ethernet/InfiniBand (MPI)", "bandwidth_bytes_s": 10e9, "latency_s": 5e-6,
           "note": "100 Gb/s = 12.5 GB/s line rate, ~10 GB/s achieved; 5 us per message with RDMA (TCP: ~25 us)"}
#: Not measured (no GPU here): a CuPy step of this MLP at batch 256 is ~1 GFLOP (tens of microseconds on a
#: modern GPU) but ~60-100 kernel launches from Python at ~5-10 us each: launch-bound, about 0.5 ms.
GPU_STEP_S = 0.5e-3


def ring_allreduce_s(ranks: int, size_bytes: float, bandwidth: float, latency: float) -> float:
    """Ring all-reduce: each rank sends and receives 2(N-1)/N of the buffer in 2(N-1) hops."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * size_bytes / bandwidth + 2 * (ranks - 1) * latency


def predictions(result: dict) -> dict:
    size = result["runs"][0]["bytes"] if result["runs"] else 4 * 669_706
    host_step = min(v["median"] for v in result["compute"].values())  # the whole host: all cores
    pack = next((r["gradient_path_s"]["median"] for r in result["runs"] if r["ranks"] == 1), 0.0)
    out = {}
    for key, link, t_compute, overhead in (("nvlink", NVLINK, GPU_STEP_S, 0.0), ("network", NETWORK, host_step, pack)):
        rows = []
        for n in (1, 2, 4, 8, 16) if key == "network" else (1, 2, 4, 8):
            t_ar = ring_allreduce_s(n, size, link["bandwidth_bytes_s"], link["latency_s"]) + (overhead if n > 1
                                                                                              else 0.0)
            # Fixed global batch split N ways: t_compute / N + t_allreduce; but a GPU step this small is
            # launch-bound, so a GPU's share of the batch costs the whole launch time whatever N.
            strong = (t_compute if key == "nvlink" else t_compute / n) + t_ar
            weak = t_compute + t_ar  # each rank keeps the whole batch: the global batch grows N times
            rows.append({"ranks": n, "allreduce_s": t_ar, "step_fixed_global_batch_s": strong,
                         "speedup_fixed_global_batch": t_compute / strong, "step_batch_per_rank_s": weak,
                         "throughput_gain_batch_per_rank": n * t_compute / weak})
        out[key] = {**link, "t_compute_s": t_compute, "host_copies_s": overhead, "rows": rows}
    return out


# -- the driver -------------------------------------------------------------------------------------------------
def _launcher() -> str:
    for name in ("mpirun", "mpiexec"):
        path = Path(sys.executable).parent / name
        if path.exists():
            return str(path)
    raise SystemExit("no mpirun beside this Python: pip install 'backprop[mpi]'")


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads)})
    return env


def _worker_args(args, mode: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.allreduce", "--worker", mode, "--out", str(out),
            "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
            "--train-steps", str(args.train_steps), "--epochs", str(args.epochs)]


def run(args) -> dict:
    from . import machine

    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    load_before = os.getloadavg()
    result = {"benchmark": "allreduce", "network": "MLP " + "-".join(map(str, SIZES)),
              "global_batch": args.batch_size, "cores": os.cpu_count(), "cpu": machine.cpu_name(),
              "load_average_before": load_before, "compute": {}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in sorted({1, os.cpu_count() or 1}):
            out = Path(tmp) / f"compute-{threads}.json"
            subprocess.run(_worker_args(args, "compute", out), cwd=ROOT, env=_env(threads), check=True,
                           timeout=args.timeout)
            result["compute"][f"{threads}_threads"] = json.loads(out.read_text())["train_step_s"]
            print(f"single process, {threads} thread(s): "
                  f"{1e3 * result['compute'][f'{threads}_threads']['median']:.1f} ms per step", flush=True)
        for n in ranks:
            out = Path(tmp) / f"ranks-{n}.json"
            subprocess.run([_launcher(), "-n", str(n), *_worker_args(args, "ranks", out)], cwd=ROOT,
                           env=_env(1), check=True, timeout=args.timeout)
            run_result = json.loads(out.read_text())
            result["runs"].append(run_result)
            print(f"{n} rank(s): MPI_Allreduce {1e6 * run_result['mpi_allreduce_s']['median']:.0f} us, gradient "
                  f"path {1e6 * run_result['gradient_path_s']['median']:.0f} us, train step "
                  f"{1e3 * run_result['train_step_s']['median']:.1f} ms", flush=True)
    result["load_average_after"] = os.getloadavg()
    result["mpi_library"] = result["runs"][0]["mpi_library"] if result["runs"] else None
    t_compute = result["compute"]["1_threads"]["median"]
    for run_result in result["runs"]:
        n = run_result["ranks"]
        run_result["model_step_s"] = t_compute / n + run_result["gradient_path_s"]["median"]
        run_result["oversubscribed"] = n > (os.cpu_count() or 1)
    result["predictions"] = predictions(result)
    return result


def markdown(result: dict) -> str:
    compute = result["compute"]
    one = compute["1_threads"]["median"]
    lines = [
        "# Gradient all-reduce on local MPI ranks (CPU)",
        "",
        f"Gradient of the {result['network']}: {result['runs'][0]['elements']:,} float32 "
        f"({result['runs'][0]['bytes'] / 1e6:.2f} MB), summed over the ranks once per step. "
        f"{result['mpi_library']}, one BLAS thread per rank. Machine: {result['cpu']}, {result['cores']} cores; "
        f"load average {result['load_average_before'][0]:.1f} before, {result['load_average_after'][0]:.1f} "
        f"after (a shared machine). Medians over the calls (each call: the slowest rank), 10th-90th "
        f"percentile in brackets.",
        "",
        "| ranks | MPI_Allreduce (µs) | gradient path (µs) | train step, global batch "
        f"{result['global_batch']} (ms) | model t_compute/N + t_allreduce (ms) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        mpi, path, step = r["mpi_allreduce_s"], r["gradient_path_s"], r["train_step_s"]
        note = " (oversubscribed: more ranks than cores)" if r["oversubscribed"] else ""
        lines.append(f"| {r['ranks']}{note} | {1e6 * mpi['median']:,.0f} [{1e6 * mpi['p10']:,.0f}-"
                     f"{1e6 * mpi['p90']:,.0f}] | {1e6 * path['median']:,.0f} [{1e6 * path['p10']:,.0f}-"
                     f"{1e6 * path['p90']:,.0f}] | {1e3 * step['median']:.1f} | {1e3 * r['model_step_s']:.1f} |")
    lines += [
        "",
        "Single process, no MPI (the plain `Trainer`), time per step at global batch "
        f"{result['global_batch']}: " + ", ".join(f"{1e3 * v['median']:.1f} ms with {k.split('_')[0]} thread(s)"
                                                    for k, v in compute.items()) + ".",
        f"The model column uses t_compute = {1e3 * one:.1f} ms (1 thread: one core per rank) and the measured "
        "gradient path as t_allreduce(N).",
        "",
        "The gradient path = packing the gradients into one weighted buffer + device-to-host copy + "
        "MPI_Allreduce + host-to-device copy + unpacking (for NumPy the copies are memcpy).",
        "",
        "## On paper: ring all-reduce 2(N-1)/N x bytes / bandwidth + 2(N-1) x latency",
        "",
    ]
    for prediction in result["predictions"].values():
        lines += [
            f"**{prediction['name']}** ({prediction['note']}; t_compute {1e3 * prediction['t_compute_s']:.2f} ms "
            f"per step at global batch {result['global_batch']}"
            + (f", plus {1e3 * prediction['host_copies_s']:.2f} ms of packing and host copies" if
               prediction["host_copies_s"] else "") + "):",
            "",
            "| N | all-reduce (ms) | step, global batch fixed (ms) | speed-up | step, batch per rank fixed (ms) | "
            "throughput gain |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in prediction["rows"]:
            lines.append(f"| {row['ranks']} | {1e3 * row['allreduce_s']:.3f} | "
                         f"{1e3 * row['step_fixed_global_batch_s']:.2f} | {row['speedup_fixed_global_batch']:.2f}x | "
                         f"{1e3 * row['step_batch_per_rank_s']:.2f} | {row['throughput_gain_batch_per_rank']:.2f}x |")
        lines.append("")
    lines += ["Written by `python -m benchmarks.allreduce`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker == "ranks":
        worker_ranks(args)
        return 0
    if args.worker == "compute":
        worker_compute(args)
        return 0
    for name in ("repeats", "batch_size", "train_steps", "epochs"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be a positive integer")
    result = run(args)
    command = " ".join(["python -m benchmarks.allreduce", *(sys.argv[1:] if argv is None else argv)])
    return report.publish(result, markdown(result), args.output_dir, args.name, command)


if __name__ == "__main__":
    sys.exit(main())
