"""backprop: neural networks trained by backpropagation on any array library and device.

The network code is written once against the Python array API standard; the
``backends`` package chooses the array library (NumPy, CuPy, PyTorch,
array-api-strict) and device.
"""

from backends import Backend, available_backends, current_backend, get_backend, set_backend, use_backend

from . import data, distributed
from .errors import (
    BackpropError,
    ConfigError,
    DataError,
    DeviceMismatchError,
    DTypeError,
    ModelFileError,
    ShapeError,
    TrainingError,
)
from .gradcheck import GradcheckError, gradcheck
from .host_io.model_files import load_model, save_model
from .init import set_seed
from .layers import GELU, Dense, Dropout, Layer, LeakyReLU, ReLU, Sequential, Sigmoid, Softmax, Tanh
from .losses import MSE, BinaryCrossEntropy, CrossEntropy, Loss
from .models import mlp
from .optim import (
    SGD,
    AdaGrad,
    Adam,
    AdamW,
    Optimizer,
    RMSprop,
    clip_grad_norm,
    make_optimizer,
    make_schedule,
)
from .training import Callback, Checkpoint, EarlyStopping, GradientMonitor, HistoryWriter, Trainer, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "GELU", "MSE", "SGD", "AdaGrad", "Adam", "AdamW", "Backend", "BackpropError", "BinaryCrossEntropy", "Callback",
    "Checkpoint", "ConfigError", "CrossEntropy", "DTypeError", "DataError", "Dense", "DeviceMismatchError",
    "Dropout", "EarlyStopping", "GradcheckError", "GradientMonitor", "HistoryWriter", "Layer", "LeakyReLU", "Loss",
    "ModelFileError", "Optimizer", "RMSprop", "ReLU", "Sequential", "ShapeError", "Sigmoid", "Softmax", "Tanh",
    "Trainer", "TrainingError", "available_backends", "clip_grad_norm", "current_backend", "data",
    "distributed", "evaluate",
    "fit", "get_backend", "gradcheck", "load_model", "make_optimizer", "make_schedule", "mlp", "save_model",
    "set_backend", "set_seed", "use_backend",
]
