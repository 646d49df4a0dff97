"""The backend registry: names to backends, selection, and the current backend.

A spec names a family and optionally a device: ``numpy``, ``cupy``,
``cupy:1`` (also ``cuda:1``), ``torch:cpu``, ``torch:cuda:0``, ``torch:mps``, ``jax:cpu``, ``jax:cuda:0``,
``array_api_strict:device1``, or ``auto`` (a working CUDA GPU through CuPy,
else through PyTorch, else NumPy). Third-party packages add families through
the entry-point group ``backprop.backends``: each entry point names a
zero-argument callable that returns a ``BackendFamily``.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .base import Backend
from .errors import BackendError, BackendUnavailable, UnknownBackend

ENTRY_POINT_GROUP = "backprop.backends"
ENV_VAR = "BACKPROP_BACKEND"


@dataclass(frozen=True)
class BackendFamily:
    """One array library: how to load it on a device, and which devices to list.

    ``load(device)`` gets the part after the first colon (or None) and returns a
    ``Backend`` or raises ``BackendUnavailable`` with a reason in words.

    ``rank_devices(device)``: for a data-parallel job of several processes on a spec naming ``device`` (the
    part after the first colon, or None), how many devices of this machine its ranks spread over, one rank
    each, counted without loading the backend or opening a context on any device; it raises ``BackendError``
    when there is none to use. None (and the default): every rank takes the device its spec names (NumPy:
    the CPU; PyTorch: ``torch:cpu``, ``torch:mps``). ``rank_device(device, local_rank)``: the device that rank
    ``local_rank`` (its number on its machine) loads when they spread: ``str(local_rank)`` by default (CuPy:
    ``cupy:1`` for rank 1), ``cuda:<local_rank>`` for PyTorch. The device index the spec names is ignored then.
    """

    name: str
    load: Callable[[str | None], Backend]
    listed_devices: Callable[[], list[str | None]] = lambda: [None]
    aliases: tuple[str, ...] = ()
    description: str = ""
    rank_devices: Callable[[str | None], int | None] = lambda device: None
    rank_device: Callable[[str | None, int], str] = lambda device, local_rank: str(local_rank)


@dataclass(frozen=True)
class BackendStatus:
    """One row of ``backprop backends``."""

    name: str
    available: bool
    device_name: str = ""
    version: str = ""
    reason: str = ""
    backend: Backend | None = field(default=None, compare=False, repr=False)


def _lazy(module: str, attribute: str) -> Callable:
    """``backends.<module>.<attribute>``, imported when first called (and looked up at every call)."""

    def call(*args: object) -> Any:
        return getattr(importlib.import_module(f"backends.{module}"), attribute)(*args)

    return call


def _every_device(count: Callable[[], int]) -> Callable[[str | None], int]:
    """A ``rank_devices`` for a family whose every spec spreads the ranks over ``count()`` devices (CuPy)."""
    return lambda device: count()


_BUILTIN = [
    BackendFamily("numpy", _lazy("numpy_backend", "load"), lambda: [None],
                  description="NumPy on the host CPU"),
    BackendFamily("cupy", _lazy("cupy_backend", "load"), _lazy("cupy_backend", "listed_devices"),
                  aliases=("cuda",), description="CuPy on an NVIDIA GPU",
                  rank_devices=_every_device(_lazy("nccl", "visible_gpus"))),
    BackendFamily("torch", _lazy("torch_backend", "load"), _lazy("torch_backend", "listed_devices"),
                  description="PyTorch tensors on CPU, CUDA or Apple MPS",
                  rank_devices=_lazy("torch_backend", "cuda_rank_devices"),
                  rank_device=lambda device, local_rank: f"cuda:{local_rank}"),
    BackendFamily("jax", _lazy("jax_backend", "load"), _lazy("jax_backend", "listed_devices"),
                  description="JAX arrays on CPU or CUDA (immutable; float64 inside the backend's x64 scope)"),
    BackendFamily("array_api_strict", _lazy("strict_backend", "load"), lambda: [None, "device1"],
                  description="the array API reference implementation (proves standard-only code)"),
    BackendFamily("simulated_cupy", _lazy("simulated_cupy", "load"), lambda: ["1"],
                  description="CuPy's current-device model on array_api_strict (finds arrays created on the "
                              "wrong GPU, without a GPU)"),
]

_families: dict[str, BackendFamily] = {family.name: family for family in _BUILTIN}
_entry_points_loaded = False
_cache: dict[str, Backend | BackendUnavailable] = {}
_instances: dict[str, Backend] = {}  # one Backend object per full name, however it was spelled
_auto_choice: Backend | None = None


def register_backend(family: BackendFamily, *, replace: bool = False) -> None:
    """Add a backend family (what the ``backprop.backends`` entry points do)."""
    taken = _names_in_use()
    for name in (family.name, *family.aliases):
        if name in taken and not replace:
            raise ValueError(f"a backend named {name!r} is already registered")
    _families[family.name] = family
    _cache.clear()


def _names_in_use() -> set[str]:
    names = {"auto"}
    for family in _families.values():
        names.add(family.name)
        names.update(family.aliases)
    return names


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points  # lazy: ~10 ms, paid once, when a backend is first looked up

    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            provided = entry_point.load()
            family = provided() if not isinstance(provided, BackendFamily) else provided
            if not isinstance(family, BackendFamily):
                raise TypeError(f"expected a BackendFamily, got {type(family).__name__}")
            register_backend(family)
        except Exception as exc:  # a broken plugin must not break the library
            warnings.warn(f"backend plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc}",
                          stacklevel=2)


def families() -> list[BackendFamily]:
    _load_entry_points()
    return list(_families.values())


def _split(spec: str) -> tuple[BackendFamily, str | None]:
    _load_entry_points()
    head, _, device = spec.strip().partition(":")
    head = head.strip().lower()
    for family in _families.values():
        if head == family.name or head in family.aliases:
            return family, (device or None)
    known = ", ".join(sorted(_names_in_use()))
    raise UnknownBackend(f"unknown backend {spec!r}; expected one of: {known} (optionally with :DEVICE)")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``(family name, device or None)`` for a spec, loading nothing (no library import, no GPU touched):
    ``"cuda:1"`` gives ``("cupy", "1")``, ``"auto"`` gives ``("auto", None)``. ``UnknownBackend`` when no
    family has that name."""
    if not isinstance(spec, str):
        raise TypeError(f"backend must be a name such as 'numpy', got {type(spec).__name__}")
    if spec.strip().lower() == "auto":
        return "auto", None
    family, device = _split(spec.strip().lower())
    return family.name, device


def get_backend(spec: str | Backend | None = None) -> Backend:
    """The backend for a spec; ``None`` means the current one (see ``current_backend``)."""
    if isinstance(spec, Backend):
        return spec
    if spec is None:
        return current_backend()
    if not isinstance(spec, str):
        raise TypeError(f"backend must be a name such as 'numpy' or a Backend, got {type(spec).__name__}")
    key = spec.strip().lower()
    if key == "auto":
        return _auto()
    if key not in _cache:
        family, device = _split(key)
        _cache[key] = _load(family, device, key)
    found = _cache[key]
    if isinstance(found, BackendUnavailable):
        available = ", ".join(s.name for s in backend_statuses() if s.available)
        raise BackendUnavailable(found.name, f"{found.reason}. Available backends: {available}")
    return found


def _load(family: BackendFamily, device: str | None, key: str) -> Backend | BackendUnavailable:
    try:
        backend = family.load(device)
    except BackendUnavailable as exc:
        return exc
    except Exception as exc:  # a probe must never crash with a traceback
        return BackendUnavailable(key, f"probe failed: {exc}".splitlines()[0])
    return _instances.setdefault(backend.name, backend)


def _auto() -> Backend:
    """A working CUDA GPU through CuPy, else through PyTorch, else NumPy, with one warning that says why."""
    global _auto_choice
    if _auto_choice is None:
        _auto_choice = auto_backend(0)
    return _auto_choice


def auto_backend(gpu: int) -> Backend:
    """What ``auto`` means on CUDA GPU ``gpu``: CuPy there when it works, else PyTorch on that GPU when it works,
    else NumPy with one warning that says why. Only that GPU is probed: a rank of a distributed job asks for its
    own GPU, and must not open a CUDA context on GPU 0 first. PyTorch is imported for this only where an NVIDIA
    driver is installed (importing it takes seconds; without a driver it has no CUDA GPU to offer)."""
    reasons = []
    for spec in (f"cupy:{gpu}", f"torch:cuda:{gpu}"):
        if spec.startswith("torch") and not _nvidia_driver_present():
            break
        if spec not in _cache:  # not get_backend: its error lists every available backend, loading them all
            family, device = _split(spec)
            _cache[spec] = _load(family, device, spec)
        found = _cache[spec]
        if not isinstance(found, BackendUnavailable):
            return found
        reasons.append(f"{spec}: {found.reason}")
    warnings.warn(f"no GPU backend: {'; '.join(reasons)}; using numpy on the CPU", RuntimeWarning, stacklevel=4)
    return get_backend("numpy")


def devices_for_ranks(spec: str) -> int | None:
    """How many devices of this machine the ranks of a data-parallel job spread over with backend ``spec``,
    one rank each (``BackendFamily.rank_devices`` of the spec's device), or None when every rank takes the
    device the spec names (``numpy``, ``torch:cpu``, ``torch:mps``). Counted without loading a backend or
    opening a context on a device, so each rank touches only its own. ``auto``: the CUDA GPUs CuPy sees, else
    those PyTorch sees (0 when there are none)."""
    name, device = parse_spec(spec)
    if name == "auto":
        return _lazy("cupy_backend", "cuda_gpu_count")() or _lazy("torch_backend", "cuda_gpu_count")()
    count = _families[name].rank_devices(device)
    return None if count is None else int(count)


def backend_for_rank(spec: str, local_rank: int) -> Backend:
    """The backend of rank ``local_rank`` (its number on its machine) of a data-parallel job, for a ``spec``
    whose ``devices_for_ranks`` is not None: the family on its ``rank_device`` (``cupy`` and ``cupy:1`` give
    ``cupy:<local_rank>``, ``torch:cuda`` and ``torch:cuda:1`` give ``torch:cuda:<local_rank>``: the index the
    spec names is ignored); ``auto``: ``auto_backend(local_rank)``, or NumPy with the reason when no GPU is
    visible. Only that device is loaded."""
    name, device = parse_spec(spec)
    if name == "auto":
        return auto_backend(local_rank if devices_for_ranks(spec) else 0)
    return get_backend(f"{name}:{_families[name].rank_device(device, local_rank)}")


def _nvidia_driver_present() -> bool:
    from .cupy_backend import nvidia_driver_loads  # lazy: the CuPy backend's module loads only where it is asked

    return nvidia_driver_loads()


def backend_statuses() -> list[BackendStatus]:
    """Every registered backend and device, available or not, with the reason when not."""
    rows = []
    for family in families():
        try:
            devices = family.listed_devices()
        except Exception:
            devices = [None]
        for device in devices:
            key = family.name if device is None else f"{family.name}:{device}"
            if key not in _cache:
                _cache[key] = _load(family, device, key)
            found = _cache[key]
            if isinstance(found, BackendUnavailable):
                rows.append(BackendStatus(key, False, reason=found.reason))
            else:
                rows.append(BackendStatus(found.name, True, found.device_name, found.version, backend=found))
    return rows


def available_backends() -> list[Backend]:
    return [row.backend for row in backend_statuses() if row.available and row.backend is not None]


def backend_of(x: object) -> Backend | None:
    """The backend, among those loaded, whose array ``x`` is (its library, on its device); None when none is."""
    for backend in list(_instances.values()):
        if backend.owns(x):
            return backend
    return None


# -- the current backend ------------------------------------------------------
_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("backprop_backend", default=None)


def default_spec() -> str:
    """``$BACKPROP_BACKEND`` when set, else ``auto``."""
    return os.environ.get(ENV_VAR, "").strip() or "auto"


def current_backend() -> Backend:
    """The backend set by ``use_backend``/``set_backend``, else the default spec's."""
    backend = _current.get()
    if backend is None:
        spec = default_spec()
        try:
            backend = get_backend(spec)
        except UnknownBackend as exc:
            raise UnknownBackend(f"${ENV_VAR}={spec!r}: {exc}") from None
    return backend


def set_backend(spec: str | Backend | None) -> Backend | None:
    """Make a backend current for this thread or task (None: back to the default)."""
    backend = None if spec is None else get_backend(spec)
    _current.set(backend)
    return backend


@contextlib.contextmanager
def use_backend(spec: str | Backend) -> Iterator[Backend]:
    """``with use_backend("torch:cpu"): ...`` makes that backend current inside the block."""
    backend = get_backend(spec)
    token = _current.set(backend)
    try:
        yield backend
    finally:
        _current.reset(token)


__all__ = ["BackendError", "BackendFamily", "BackendStatus", "auto_backend", "available_backends", "backend_for_rank",
           "backend_of", "backend_statuses", "current_backend", "default_spec", "devices_for_ranks", "families",
           "get_backend", "parse_spec", "register_backend", "set_backend", "use_backend"]
