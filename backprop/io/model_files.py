"""Model files in the safetensors format (checkpoints use the same format: :mod:`.checkpoints`).

safetensors stores named arrays plus a JSON header of strings; loading it
never executes code (unlike pickle). We put the architecture and any metadata
(training settings, class names, feature scaling, history) in the header, so a
file alone rebuilds the model on any backend. Every write goes through
``write_bytes_atomic``: an interrupted save leaves the previous file intact. (safetensors' own
``save_file`` is not used: it makes a temporary file of its own, renames it over ours, which leaves it
behind after a kill, and forces mode 0600.)

Nothing in a file is trusted before it is checked:

* integrity: since format version 2 the header holds the SHA-256 of the tensors (names, dtypes, shapes
  and bytes, in name order) and of the other header entries; a file whose content does not match is
  "damaged". Floating-point arrays must be finite. Version 1 files (written before the checksums) are
  still read, with a warning that their integrity cannot be checked: every other check applies to them,
  and saving them again adds the checksums;
* structure: tensor dtypes must be ones backprop writes (no bfloat16 or float8), header entries must have
  the right types, and the parameter shapes the architecture declares must be those of the tensors in the
  file *before* the model is built, so a header cannot make the loader allocate more than the file holds;
  ``Sequential`` nesting is capped (``backprop.layers.MAX_NESTING``).

Every problem is a one-line ``ModelFileError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from backends import Backend, dtype_name, get_backend

from ..errors import ConfigError, ModelFileError, short_repr
from ..layers import Layer, architecture, build, declared_arrays
from ..on_device import on_device
from ..validators import is_integer
from .atomic import write_bytes_atomic

#: What a path argument may be.
PathLike = str | os.PathLike

FORMAT = "backprop"
#: 2: checksums of the tensors and of the header (``WEIGHTS_CHECKSUM``, ``HEADER_CHECKSUM``).
FORMAT_VERSION = 2
#: Versions this code reads; version 1 files have no checksums (read with a warning).
READABLE_VERSIONS = ("1", "2")
WEIGHTS_CHECKSUM = "weights_sha256"
HEADER_CHECKSUM = "header_sha256"
_RESERVED = ("format", "format_version", WEIGHTS_CHECKSUM, HEADER_CHECKSUM)
#: The safetensors dtypes backprop writes and reads; others (BF16, F8_*, ...) are refused before reading.
TENSOR_DTYPES = ("F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL")
#: The model dtypes a header may name.
MODEL_DTYPES = ("float16", "float32", "float64")


def weights_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) of the tensors: each one's name, little-endian dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        dtype = array.dtype.newbyteorder("<")
        description = json.dumps([name, dtype.str, list(array.shape)]).encode()
        digest.update(len(description).to_bytes(8, "little") + description)
        digest.update(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def header_checksum(metadata: dict[str, str]) -> str:
    """SHA-256 (hex) of the header's string entries, the checksum entries left out."""
    entries = sorted((key, value) for key, value in metadata.items() if key not in (WEIGHTS_CHECKSUM, HEADER_CHECKSUM))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def save_arrays(path: PathLike, arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> None:
    """Write host arrays and a JSON-able header to a safetensors file, atomically, with checksums."""
    clash = sorted(set(header) & set(_RESERVED))
    if clash:
        raise ValueError(f"header keys {clash} are reserved")
    # reshaped: ascontiguousarray makes a 0-d array (a step count, say) 1-d, and it must come back 0-d
    tensors = {name: np.ascontiguousarray(array).reshape(np.shape(array)) for name, array in arrays.items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                **{key: json.dumps(value) for key, value in header.items()}}
    metadata[WEIGHTS_CHECKSUM] = weights_checksum(tensors)
    metadata[HEADER_CHECKSUM] = header_checksum(metadata)
    write_bytes_atomic(path, save(tensors, metadata=metadata))


def load_arrays(path: PathLike, *, kind: str = "model") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by ``save_arrays``, checked (see the module docstring): ``(arrays, header)``.

    A damaged, foreign or malformed file raises ``ModelFileError``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such {kind} file")
    try:
        # safetensors checks on opening that the tensors' declared sizes add up to the file's size
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ModelFileError(f"{path}: a safetensors file, but not one written by backprop "
                                     f"(no backprop header)")
            version = metadata.get("format_version", "?")
            if version not in READABLE_VERSIONS:
                raise ModelFileError(f"{path}: {kind} file format version {short_repr(version)}; this backprop reads "
                                     f"versions {' and '.join(READABLE_VERSIONS)}")
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                dtype = handle.get_slice(name).get_dtype()
                if dtype not in TENSOR_DTYPES:
                    raise ModelFileError(f"{path}: tensor {short_repr(name)} has dtype {short_repr(dtype)}, which "
                                         f"backprop does not read (expected one of {', '.join(TENSOR_DTYPES)})")
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except ModelFileError:
        raise
    except PermissionError:
        raise ModelFileError(f"{path}: permission denied: cannot read this {kind} file") from None
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{path}: not a readable {kind} file (damaged or not safetensors: "
                             f"{short_repr(detail, 200)})") from None
    if version == "1":
        warnings.warn(f"{path}: written by an older backprop (format version 1) without checksums, so its "
                      f"integrity cannot be checked; saving it again adds them", RuntimeWarning, stacklevel=2)
    else:
        if metadata.get(HEADER_CHECKSUM) != header_checksum(metadata):
            raise ModelFileError(f"{path} is damaged: its header does not match the checksum recorded when it "
                                 f"was saved")
        if metadata.get(WEIGHTS_CHECKSUM) != weights_checksum(arrays):
            raise ModelFileError(f"{path} is damaged: its weights do not match the checksum recorded when it "
                                 f"was saved")
    for name, array in arrays.items():
        if array.dtype.kind == "f" and array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise ModelFileError(f"{path}: {kind} file holds non-finite values (NaN or inf) in array "
                                 f"{short_repr(name)}; it cannot be used")
    header = {}
    for key, value in metadata.items():
        if key in _RESERVED:
            continue
        try:
            header[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{path}: damaged header: entry {short_repr(key)} is not JSON ({exc})") from None
        except RecursionError:
            raise ModelFileError(f"{path}: header entry {short_repr(key)} is nested too deeply") from None
    return arrays, header


def model_arrays(model: Layer, prefix: str = "") -> dict[str, np.ndarray]:
    """The model's parameters and buffers as host arrays, keyed ``param/<name>`` and ``buffer/<name>``."""
    backend = model.backend
    return {f"{prefix}{key}": backend.to_host(array) for key, array in model.named_arrays().items()}


@on_device
def assign_model_arrays(model: Layer, arrays: Mapping[str, np.ndarray], source: object, prefix: str = "") -> None:
    """Give the model's parameters and buffers the saved arrays (copied to its device), checking names and
    shapes first: on an error the model keeps all its arrays."""
    backend = model.backend
    device_arrays = {}
    current: dict[str, Any] = model.named_arrays()  # arrays of the model's library (duck-typed)
    for name, array in current.items():
        key = f"{prefix}{name}"
        if key not in arrays:
            raise ModelFileError(f"{source}: missing array {key!r} for this architecture")
        saved = arrays[key]
        if tuple(saved.shape) != tuple(array.shape):
            raise ModelFileError(f"{source}: array {key!r} has shape {tuple(saved.shape)}, the architecture "
                                 f"expects {tuple(array.shape)}")
        device_arrays[name] = backend.from_host(saved, dtype=array.dtype)
    model.replace_arrays(device_arrays)


#: The name of a run's model file in its directory (``backprop train`` writes it; ``load_model`` finds it there).
MODEL_FILE = "model.safetensors"


class ModelMetadata(Mapping[str, Any]):
    """The metadata saved with a model, read-only: what ``load_model`` puts on the model as ``model.metadata``
    (``model.metadata["class_names"]``, ``model.metadata.get("options")``). A copy of the file's entries:
    changing a nested value changes neither the file nor another model loaded from it."""

    def __init__(self, entries: Mapping[str, Any] | None = None):
        self._entries = dict(entries or {})

    def __getitem__(self, key: str) -> Any:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ModelMetadata({self._entries!r})"


def save_model(path: PathLike, model: Layer, metadata: Mapping[str, Any] | None = None) -> None:
    """Save a model (architecture, weights and metadata) to one ``.safetensors`` file.

    ``metadata``: JSON-able entries to keep with the model (``load_model`` gives them back as
    ``model.metadata``); None saves none, even when the model has metadata of its own from a file it was
    loaded from (pass ``model.metadata`` to keep it)."""
    header = {"kind": "model", "architecture": architecture(model), "dtype": _dtype_name(model),
              "metadata": dict(metadata or {})}
    save_arrays(path, model_arrays(model), header)


def load_model(path: PathLike, backend: Backend | str | None = None) -> Layer:
    """Load a model saved by ``save_model`` (or the model in a checkpoint) onto ``backend`` (default: the
    current one). The metadata saved with it is on the model, as ``model.metadata`` (a read-only mapping).

    ``model, metadata = load_model(path)`` (this function's form before it returned the model alone) does not
    work: write ``model = load_model(path)`` and read ``model.metadata``. ``path`` may be a run directory of
    ``backprop train``: its ``model.safetensors`` is loaded, as ``backprop evaluate`` and ``predict`` do."""
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise ModelFileError(f"{path}: a directory without a {MODEL_FILE}; expected a model file, or the run "
                                 f"directory of a finished backprop train")
        path = path / MODEL_FILE
    arrays, header = load_arrays(path)
    if header.get("kind") not in ("model", "checkpoint"):
        raise ModelFileError(f"{path}: expected a model file, found a {short_repr(header.get('kind'))} file")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: header entry 'metadata' must be a dict, got {type(metadata).__name__}")
    _check_metadata(path, metadata)
    backend = get_backend(backend)
    with backend.activate():  # the model is built, and its arrays are filled, on the backend's device
        model = build_checked(path, header, arrays, backend)
        assign_model_arrays(model, arrays, path)
    outputs = model_outputs(model)
    for key, count in (("class_names", len(metadata.get("class_names") or [])), ("num_classes",
                                                                               metadata.get("num_classes"))):
        binary = outputs == 1 and count == 2  # one logit of class 1 (binary cross-entropy) for two classes
        if outputs is not None and count and count != outputs and not binary:
            raise ModelFileError(f"{path}: metadata {key!r} gives {count} classes, the model has {outputs} outputs")
    model.metadata = ModelMetadata(metadata)
    return model


def build_checked(path: object, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                  backend: Backend) -> Layer:
    """The model the header's ``architecture`` and ``dtype`` describe, built (on ``backend``, which the caller
    activates) only after its declared parameter shapes were found to be exactly those of the ``param/`` and
    ``buffer/`` arrays in ``arrays``; its arrays are freshly initialized (``assign_model_arrays`` fills them).
    ``path`` names the source in messages."""
    description, dtype = described_model(path, header)
    try:
        declared = declared_arrays(description)
    except ConfigError as exc:
        raise ModelFileError(f"{path}: the architecture in the header cannot be rebuilt ({exc})") from None
    if declared is not None:
        for key, shape in declared.items():
            if key not in arrays:
                raise ModelFileError(f"{path}: the architecture declares array {key!r} of shape {short_repr(shape)}, "
                                     f"which the file does not hold")
            if tuple(arrays[key].shape) != shape:
                raise ModelFileError(f"{path}: array {key!r} has shape {tuple(arrays[key].shape)}, the architecture "
                                     f"declares {short_repr(shape)}")
        extra = sorted(key for key in arrays if key.startswith(("param/", "buffer/")) and key not in declared)
        if extra:
            raise ModelFileError(f"{path}: array {short_repr(extra[0])} is not part of the architecture in the header")
    try:
        return build(description, backend=backend, dtype=dtype)
    except (KeyError, ConfigError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: the architecture in the header cannot be rebuilt "
                             f"({short_repr(str(exc), 300)})") from None


def described_model(path: object, header: Mapping[str, Any]) -> tuple[dict, str]:
    """The header's ``architecture`` (a dict) and ``dtype`` (one of ``MODEL_DTYPES``), checked."""
    description, dtype = header.get("architecture"), header.get("dtype", "float32")
    if not isinstance(description, dict):
        raise ModelFileError(f"{path}: header entry 'architecture' must be a dict, got {type(description).__name__}")
    if dtype not in MODEL_DTYPES:
        raise ModelFileError(f"{path}: header entry 'dtype' must be one of {', '.join(MODEL_DTYPES)}, "
                             f"got {short_repr(dtype)}")
    return description, dtype


def _check_metadata(path: object, metadata: dict[str, Any]) -> None:
    """The types of the metadata entries backprop itself reads (``backprop evaluate`` and ``predict``)."""
    def bad(key: str, expected: str) -> ModelFileError:
        return ModelFileError(f"{path}: metadata entry {key!r} must be {expected}, got {short_repr(metadata[key])}")

    names = metadata.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise bad("class_names", "a list of strings")
    names = metadata.get("target_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise bad("target_names", "a list of strings")
    count = metadata.get("num_classes")
    if count is not None and not (is_integer(count) and count >= 1):
        raise bad("num_classes", "a positive integer")
    for key in ("dataset", "dataset_sha256"):
        if metadata.get(key) is not None and not isinstance(metadata[key], str):
            raise bad(key, "a string")
    if "options" in metadata and not isinstance(metadata["options"], dict):
        raise bad("options", "a dict")
    if metadata.get("scaler") is not None and not isinstance(metadata["scaler"], dict):
        raise bad("scaler", "a dict")


def model_outputs(model: Layer) -> int | None:
    """The number of outputs when the model ends in a layer that says (``out_features``), else None."""
    layers = list(getattr(model, "layers", [model]))
    while layers:
        layer = layers.pop()
        if hasattr(layer, "layers"):
            layers.extend(layer.layers)
        elif isinstance(getattr(layer, "out_features", None), int):
            return layer.out_features
        elif layer.named_parameters():
            return None  # a parametric last layer that does not say
    return None


def _dtype_name(model: Layer) -> str:
    return dtype_name(model.dtype)
