"""The portable gradient all-reduce: through the host, for any backend (``Backend.allreducer``'s default)."""

from __future__ import annotations

from typing import Any


class HostReducer:
    """The all-reduce for CPU backends (and any backend): device → host copy, ``MPI_Allreduce`` in place on
    the NumPy buffer, host → device copy. The Ctrl-C flag rides in the buffer's last element."""

    carries_flag = True

    def __init__(self, communicator: Any, backend: Any):
        self.communicator, self.backend = communicator, backend

    def allreduce(self, flat: Any, flag: float) -> tuple[Any, float]:
        """``(sum of flat over ranks on the device, sum of flag over ranks)``; ``flat`` ends with the flag."""
        host = self.backend.to_host(flat)  # a fresh, writable host copy
        MPI = self.communicator.MPI
        self.communicator.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        return self.backend.from_host(host, dtype=flat.dtype), float(host[-1])
