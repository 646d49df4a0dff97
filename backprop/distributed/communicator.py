"""The MPI side of data-parallel training: ranks, sharding, broadcasts, the gradient all-reduce, metrics.

Communication goes through ``mpi4py`` only, and only on host buffers that the
backend itself produced (``backend.to_host``): this module creates no arrays
of its own and imports no array library. The array work (packing the
gradients into one flat buffer, scaling, unpacking) stays on the backend's
device, written against the array API like the rest of ``backprop/``.

How one step of a global batch of B examples works on N ranks
(``Trainer._run_epoch`` with a communicator):

* every rank holds the whole data set and draws the same shuffle (same seed),
  so every rank knows every global batch; rank r takes the contiguous slice
  ``shard(start, stop)`` of it: ``b_r`` rows, with ``b_0 + ... + b_{N-1} = B``
  (the sizes differ by at most one; a rank may get none when B < N);
* each rank runs forward and backward on its rows: the gradient ``g_r`` of the
  mean loss over its ``b_r`` rows;
* the gradient of the mean loss over the global batch is the weighted mean

      g = (1/B) Σ_i ∇ℓ_i = Σ_r (b_r / B) g_r

  so every rank weights its gradient by ``b_r / B`` (the trainer scales the
  loss gradient that starts the backward pass) and ONE all-reduce (sum) of one
  contiguous buffer holding every parameter's gradient gives ``g`` on every
  rank — the single-process gradient of the global batch, up to float
  rounding, whether or not N divides B. With gradient accumulation a step is
  several global micro-batches, each sharded the same way: a rank's rows of
  each are weighted by their share of the step's examples and added up, and
  the one all-reduce comes at the end of the step;
* every rank then clips and steps with the same ``g`` from the same weights,
  so the weights stay identical on every rank without further communication.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

from backends import Backend, BackendError, backend_for_rank, default_spec, devices_for_ranks, get_backend

from ..errors import BackpropError, ConfigError, TrainingError
from ..on_device import on_model_device
from ..training.interrupts import INTERRUPTED_STATUS, Terminated, exit_status, raise_terminated

#: Environment variables that set the BLAS and OpenMP thread counts: the user's choice, which wins.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _mpi() -> Any:
    try:
        from mpi4py import MPI  # lazy: optional library (importing this package needs no MPI)
    except ImportError as exc:
        raise ConfigError(f"distributed training needs mpi4py and an MPI library: pip install 'backprop[mpi]' "
                          f"({exc})") from None
    return MPI


class Communicator:
    """A group of processes (ranks) training one model together; wraps an mpi4py communicator.

    ``Communicator()`` uses ``MPI.COMM_WORLD`` (every process ``mpirun -n N`` started). Launched without
    ``mpirun`` it is a group of one, and training is exactly the single-process training.
    """

    def __init__(self, comm: Any = None):
        self.MPI = _mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._local_rank: int | None = None
        self._local_size: int | None = None
        self._guards = 0  # nesting depth of abort_on_error
        self._stop_requested = False  # Ctrl-C (or SIGTERM) reached this rank (while Ctrl-C is deferred)
        self._stop_terminated = False  # ... and it was SIGTERM
        self._interrupt_agreed = False  # every rank stopped at the same step because of it
        self._reducers: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that writes files and prints."""
        return self.rank == 0

    @property
    def local_rank(self) -> int:
        """This rank's number among the ranks on the same machine (picks the GPU on a multi-GPU machine)."""
        if self._local_rank is None:
            local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
            self._local_rank = local.Get_rank()
            local.Free()
        return self._local_rank

    @property
    def local_size(self) -> int:
        """How many ranks of this job run on this machine."""
        if self._local_size is None:
            local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
            self._local_size = local.Get_size()
            local.Free()
        return self._local_size

    def share_cores(self, backend: Backend) -> str | None:
        """Give each rank on this machine its share of the cores for the backend's CPU threads
        (``backend.limit_threads``; a backend whose kernels use no CPU threads has nothing to limit), unless the
        user set a thread count in the environment. Returns a warning to show when it could not."""
        if any(os.environ.get(v) for v in THREAD_VARIABLES):
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        share = max(1, cores // self.local_size)
        if backend.limit_threads(share):
            return None
        return (f"could not limit {backend.library}'s threads to {share} per rank: {backend.name}'s limit_threads was "
                f"not applied (JAX's XLA, say, sizes its thread pool once, at start-up), and {self.local_size} "
                f"rank{'s' if self.local_size != 1 else ''} on {cores} cores may oversubscribe them; set "
                f"OMP_NUM_THREADS={share} before starting the ranks (for JAX, XLA_FLAGS=\"--xla_cpu_multi_thread_eigen"
                f"=false intra_op_parallelism_threads=1\" keeps XLA on one thread)")

    # -- sharding -------------------------------------------------------------
    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous part ``[lo, hi)`` of the global batch ``[start, stop)``.

        The parts of ranks 0..N-1 follow each other and cover the batch exactly; their sizes differ by at
        most one (``B // N`` or ``B // N + 1`` rows), and some are empty when the batch is smaller than N.
        """
        count = stop - start
        return start + count * self.rank // self.size, start + count * (self.rank + 1) // self.size

    # -- host-side collectives on small Python values -------------------------
    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable value) on every rank."""
        return self.comm.bcast(obj, root=0)

    def gather_values(self, values: Iterable[float]) -> list[list[float]]:
        """Every rank's list of numbers, in rank order, on every rank (for a few metrics at a time)."""
        return self.comm.allgather([float(v) for v in values])

    def sum_values(self, values: Iterable[float]) -> list[float]:
        """The element-wise sum over ranks of a short list of numbers, identical on every rank."""
        return [sum(column) for column in zip(*self.gather_values(values))]

    def barrier(self) -> None:
        self.comm.Barrier()

    # -- model arrays -----------------------------------------------------------
    @on_model_device
    def broadcast_parameters(self, model: Any) -> None:
        """Give every parameter and buffer of ``model`` rank 0's values (once, at the start of training: ranks
        that built the model differently, or from another seed, start equal). Nothing to do for one rank."""
        if self.size == 1:
            return
        backend = model.backend
        arrays = model.named_arrays()
        received = {}
        for key, array in arrays.items():
            host = backend.to_host(array)  # rank 0: the values; elsewhere: a receive buffer of the right kind
            self.comm.Bcast(host, root=0)
            if not self.is_root:
                received[key] = backend.from_host(host, dtype=array.dtype)
        model.replace_arrays(received)

    @on_model_device
    def allreduce_gradients(self, model: Any, weight: float = 1.0) -> None:
        """Replace every parameter's gradient by the sum over ranks of ``weight`` times it, on every rank.

        The trainer weights each rank's gradient by its share of the step's examples as it computes it, so
        the sum is the gradient of the whole step's mean loss (``weight`` stays 1). One all-reduce of one
        contiguous buffer per step, whatever the number of parameters. Every parameter takes part (one without
        a gradient, as on a rank that got no rows, counts as 0).

        The buffer also carries one more number: whether Ctrl-C reached this rank (see ``abort_on_error``):
        0 (no), 1 (Ctrl-C) or N + 1 (SIGTERM), so the sum over N ranks tells whether any rank got SIGTERM.
        When either reached any rank, every rank raises ``KeyboardInterrupt`` here, at the same step
        (``Terminated`` when one was SIGTERM, so every rank exits with the same status).
        """
        backend = model.backend
        xp = backend.xp
        boxes = model.parameters()
        if not boxes:
            return
        params = [box.value for box in boxes]
        dtype = params[0].dtype
        if any(p.dtype != dtype for p in params):
            raise ConfigError("distributed training needs all parameters of one dtype (one all-reduce buffer)")
        sizes = [_size(p.shape) for p in params]
        reducer = self._reducer(backend)
        stop = 0.0 if not self._stop_requested else self.size + 1.0 if self._stop_terminated else 1.0
        if any(box.grad is not None for box in boxes):  # pack (concat copies: the buffer is sent and received)
            parts = [xp.zeros((size,), dtype=dtype, device=backend.device) if box.grad is None
                     else xp.reshape(box.grad, (size,)) for box, size in zip(boxes, sizes)]
            if weight != 1.0:
                parts = [part * weight for part in parts]
        else:
            parts = [xp.zeros((sum(sizes),), dtype=dtype, device=backend.device)]
        if reducer.carries_flag:
            parts.append(xp.full((1,), stop, dtype=dtype, device=backend.device))
        flat, stops = reducer.allreduce(xp.concat(parts), stop)
        if stops:
            self._interrupt_agreed, self._stop_requested, self._stop_terminated = True, False, False
            terminated, interrupted = divmod(int(stops), self.size + 1)
            if terminated:
                raise Terminated(f"SIGTERM reached {terminated + interrupted} of {self.size} ranks")
            raise KeyboardInterrupt(f"Ctrl-C reached {interrupted} of {self.size} ranks")
        offset = 0
        for box, param, size in zip(boxes, params, sizes):
            box.grad = xp.reshape(flat[offset:offset + size], tuple(param.shape))
            offset += size

    def _reducer(self, backend: Backend) -> Any:
        reducer = self._reducers.get(backend.name)
        if reducer is None:
            if self.size == 1:
                reducer = OneRankReducer()
            else:
                reducer = backend.allreducer(self)
            self._reducers[backend.name] = reducer
        return reducer

    # -- metrics ------------------------------------------------------------------
    def reduce_progress(self, finite: float, good_steps: float, loss_sum: float,
                        correct: float) -> tuple[float, float, float, float]:
        """The global view of the trainer's running figures: finite only if finite on every rank, good steps
        the fewest any rank had, loss sum and correct count summed (one small collective, at log points)."""
        rows = self.gather_values([finite, good_steps, loss_sum, correct])
        return (min(r[0] for r in rows), min(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows))

    @on_model_device
    def evaluate(self, model: Any, x: Any, y: Any, loss_fn: Any, metrics: Any = None) -> dict[str, float]:
        """``training.evaluate`` over the whole of ``(x, y)``, each rank evaluating its shard of it."""
        # lazy: circular import (the training package imports this module for its Trainer)
        from ..training.metrics import evaluate, evaluation_sums, metric_results, metrics_for

        metrics = metrics_for(loss_fn, metrics)
        if self.size == 1:
            return evaluate(model, x, y, loss_fn, metrics=metrics)
        for metric in metrics:  # from the whole of y, not this rank's shard: sums about one shift add up
            metric.prepare(model.backend.xp, y)
        n = x.shape[0]
        lo, hi = self.shard(0, n)
        if hi > lo:
            loss_sum, sums, outputs = evaluation_sums(model, x[lo:hi, ...], y[lo:hi, ...], loss_fn, metrics)
        else:  # no rows here: zeros for the sum, as many as the other ranks send
            outputs = int(model.forward(x[:1, ...], training=False).shape[-1])
            loss_sum, sums = 0.0, [0.0] * sum(m.size(outputs) for m in metrics)
        total = self.sum_values([loss_sum, *sums])
        return metric_results(total[0], total[1:], n, metrics, outputs)

    # -- failures ---------------------------------------------------------------------
    def abort(self, error: object, code: int = 1) -> None:
        """Print ``error`` as one line naming this rank, then end every rank of the job (``MPI_Abort``):
        ranks blocked in a collective waiting for this one are killed by the launcher instead of hanging."""
        details = ""
        if isinstance(error, BaseException):
            if not isinstance(error, (BackpropError, BackendError)):
                details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                text = f"{type(error).__name__}: {error}"
            else:
                text = str(error)
        else:
            text = str(error)
        text = " ".join(text.split("\n"))
        # One write, then a moment before MPI_Abort: the launcher kills the job as soon as it hears of the abort,
        # and output still on its way from this rank could be lost (under load the one-line error was).
        sys.stdout.flush()
        sys.stderr.write(f"{details}error: rank {self.rank} of {self.size}: {text}\n")
        sys.stderr.flush()
        time.sleep(0.2)
        self.comm.Abort(code)
        os._exit(code)  # MPI_Abort may return before the launcher kills this process (MPICH does): never go on

    def end_interrupted(self, wait: float = 30.0, status: int = INTERRUPTED_STATUS) -> None:
        """After Ctrl-C (or SIGTERM): make sure no rank is left waiting in a collective (a no-op for one rank).

        Usually every rank stopped at the same step (the flag travels with the gradients) and the ranks can
        simply exit. Otherwise (a ``KeyboardInterrupt`` outside the training steps, or a second Ctrl-C) a rank
        may sit in a collective that the others will never join: then rank 0, once its callbacks have saved
        the checkpoint, ends every rank (exit ``status``: 130, or 143 after SIGTERM); the other ranks wait up to
        ``wait`` seconds for that (rank 0 may be writing), then end the job themselves."""
        if self.size == 1 or self._interrupt_agreed:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        if not self.is_root:
            time.sleep(wait)
        self.comm.Abort(status)
        os._exit(status)

    @contextlib.contextmanager
    def abort_on_error(self) -> Iterator[Communicator]:
        """Turn an exception on one rank into the end of the whole job (on more than one rank).

        ``TrainingError`` (a non-finite loss) passes through: the trainer decides it from figures reduced over
        all ranks, so every rank raises it at the same step. Ctrl-C is deferred while inside: the first one
        only sets a flag that the next gradient all-reduce carries to every rank, so all ranks raise
        ``KeyboardInterrupt`` at the same step (a second Ctrl-C raises at once); then ``end_interrupted``.
        SIGTERM is deferred the same way where it raises ``Terminated`` (under ``terminate_as_interrupt``,
        as in ``backprop train``; ``mpirun`` forwards it to every rank).
        Nested uses (the CLI around ``train_run`` around ``Trainer.fit``) act only in the outermost one, so
        code in between sees the exception first."""
        outermost = self._guards == 0
        self._guards += 1
        previous = self._defer_ctrl_c() if outermost and self.size > 1 else None
        try:
            yield self
        except TrainingError:
            raise
        except KeyboardInterrupt as interrupt:
            if self._guards == 1:
                self.end_interrupted(status=exit_status(interrupt))
            raise
        except Exception as exc:
            if self.size > 1 and self._guards == 1:
                self.abort(exc)
            raise
        finally:
            self._guards -= 1
            for signum, handler in (previous or {}).items():
                signal.signal(signum, handler)

    def _defer_ctrl_c(self) -> dict | None:
        """Install the handlers that only set the flag (the main thread only): for SIGINT, and for SIGTERM
        where it raises ``Terminated``. Returns the handlers they replaced."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self._stop_requested:
                raise_terminated()
            self._stop_requested = self._stop_terminated = True

        previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint)}
        if signal.getsignal(signal.SIGTERM) is raise_terminated:
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
        return previous


class OneRankReducer:
    """The all-reduce of a job of one rank: the sum over one rank is the buffer itself, left on its device (no
    copy to the host and back, which on a GPU would wait for it every step)."""

    carries_flag = False

    def allreduce(self, flat: Any, flag: float) -> tuple[Any, float]:
        return flat, flag


_WORLD: Communicator | None = None


def world() -> Communicator:
    """The communicator of every process of the job (``MPI.COMM_WORLD``), created once."""
    global _WORLD
    if _WORLD is None:
        _WORLD = Communicator()
    return _WORLD


def device_backend(backend: str | Backend | None, communicator: Communicator) -> Backend:
    """The backend this rank trains on. With a backend family that spreads the ranks of a machine over its
    devices (``backends.devices_for_ranks``: CuPy, as ``cupy``, ``cupy:N`` or ``cuda``; PyTorch CUDA, as
    ``torch:cuda`` or ``torch:cuda:N``, and ``torch`` where a CUDA GPU is visible; ``auto`` where a CUDA GPU is
    visible) and several ranks: the device numbered as the rank on its machine, one rank each (the N a spec
    names is ignored); otherwise the backend ``backend`` names (``numpy``, ``torch:cpu``, ``torch:mps``). More
    ranks on a machine than it has GPUs is a ``ConfigError`` (two ranks cannot share a GPU in one NCCL
    communicator, and would halve each other's speed).

    ``backend`` is a spec (None: the default one) or a ``Backend``. Give a spec: it is read without loading
    anything, so each rank touches its own GPU only. Loading ``cupy`` first would open a CUDA context on GPU 0
    in every rank (hundreds of MB of GPU 0's memory each) before the rank moved to its own GPU."""
    if backend is None:
        backend = default_spec()
    spec = backend.name if isinstance(backend, Backend) else backend  # a Backend's name is its full spec
    devices = devices_for_ranks(spec) if communicator.size > 1 else None
    if devices is None:
        return get_backend(backend)
    if devices and communicator.local_size > devices:
        raise ConfigError(f"{communicator.local_size} ranks on this machine but {devices} GPU"
                          f"{'s' if devices != 1 else ''} visible: start at most one rank per GPU "
                          f"(mpirun -n {devices} per machine)")
    return backend_for_rank(spec, communicator.local_rank)


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


__all__ = ["Communicator", "OneRankReducer", "device_backend", "world"]
