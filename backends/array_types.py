"""Type aliases for the backends' arrays, which are duck-typed.

Each backend hands out the arrays of its own library (NumPy, PyTorch, CuPy, JAX, array_api_strict or a test
wrapper), with no common base class, and the array libraries are not followed by the type checker. So an array
is ``Any`` to it; the aliases say what a value is to the reader.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy.typing as npt

#: An array of the backend's library (``backend.xp``'s arrays), on the backend's device.
Array: TypeAlias = Any
#: A dtype of the backend's library (``backend.xp.float32``, ...).
DType: TypeAlias = Any
#: A device of the backend's library (``torch.device``, ``cupy.cuda.Device``, a JAX device, an array_api_strict
#: device).
Device: TypeAlias = Any
#: What ``numpy.asarray`` takes: data on the host, handed to ``Backend.from_host``.
HostArrayLike: TypeAlias = npt.ArrayLike
