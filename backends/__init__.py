"""Array libraries and devices for backprop.

Everything library- or device-specific lives here; the network code in
``backprop/`` sees only a ``Backend``: its array API namespace ``xp``, its
``device``, and the few operations the standard lacks.
"""

from .base import Backend, ThreadLimit, describe_array, dtype_name
from .errors import BackendError, BackendSetupError, BackendUnavailable, UnknownBackend
from .random import DeviceRandom, HostRandom, seed_to_int
from .registry import (
    ENTRY_POINT_GROUP,
    ENV_VAR,
    BackendFamily,
    BackendStatus,
    auto_backend,
    available_backends,
    backend_for_rank,
    backend_of,
    backend_statuses,
    current_backend,
    default_spec,
    devices_for_ranks,
    families,
    get_backend,
    parse_spec,
    register_backend,
    set_backend,
    use_backend,
)

__all__ = [
    "ENTRY_POINT_GROUP", "ENV_VAR", "Backend", "BackendError", "BackendFamily", "BackendSetupError",
    "BackendStatus", "BackendUnavailable", "DeviceRandom", "HostRandom", "ThreadLimit", "UnknownBackend",
    "auto_backend", "available_backends", "backend_for_rank", "backend_of", "backend_statuses", "current_backend",
    "default_spec", "describe_array", "devices_for_ranks", "dtype_name", "families", "get_backend", "parse_spec",
    "register_backend", "seed_to_int", "set_backend", "use_backend",
]
