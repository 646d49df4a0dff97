"""Data-parallel training on several processes: MPI between ranks (``mpi4py``), NCCL between GPUs.

Launch N copies of the same program with ``mpirun -n N`` (``pip install 'backprop[mpi]'`` brings mpi4py and
MPICH, whose ``mpirun`` lands beside ``python``)::

    mpirun -n 4 backprop train --distributed ...

or in Python, ``Trainer(model, ..., communicator=backprop.distributed.world())`` or
``fit(model, x, y, ..., distributed=True)``. Each rank trains on its shard of every global batch; the
gradients are averaged over the ranks in one all-reduce per step, so every rank takes the same step the
single-process trainer would take on the global batch. Only rank 0 prints and writes files.

Importing this package needs neither mpi4py nor CuPy; ``world()`` needs mpi4py.
"""

from backends.allreduce import HostReducer

from .communicator import Communicator, device_backend, world

__all__ = ["Communicator", "HostReducer", "device_backend", "world"]
