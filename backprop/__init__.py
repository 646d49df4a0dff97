"""backprop: neural networks trained by backpropagation on any array library and device.

The network code is written once against the Python array API standard; the
``backends`` package chooses the array library (NumPy, CuPy, PyTorch,
array-api-strict) and device.
"""

from backends import Backend, available_backends, current_backend, get_backend, set_backend, use_backend

from .errors import BackpropError, ConfigError, DeviceMismatchError, DTypeError, ShapeError
from .gradcheck import GradcheckError, gradcheck
from .init import set_seed
from .layers import GELU, Dense, Layer, LeakyReLU, ReLU, Sequential, Sigmoid, Softmax, Tanh
from .losses import MSE, BinaryCrossEntropy, CrossEntropy, Loss
from .models import mlp
from .optim import SGD

__version__ = "0.1.0"

__all__ = [
    "GELU", "MSE", "SGD", "Backend", "BackpropError", "BinaryCrossEntropy", "ConfigError", "CrossEntropy",
    "DTypeError", "Dense", "DeviceMismatchError", "GradcheckError", "Layer", "LeakyReLU", "Loss", "ReLU",
    "Sequential", "ShapeError", "Sigmoid", "Softmax", "Tanh", "available_backends", "current_backend",
    "get_backend", "gradcheck", "mlp", "set_backend", "set_seed", "use_backend",
]
