"""backprop: neural networks trained by backpropagation on any array library and device.

The network code is written once against the Python array API standard; the ``backends`` package chooses
the array library (NumPy, CuPy, PyTorch, JAX, array-api-strict) and device. ``import backprop as bp`` gives
everything a model needs, grouped as ``torch.nn`` and ``thinc.api`` group it: layers, losses, optimizers
(with schedules and clipping), metrics, training, model files, data, backends, errors.

Argument conventions, said once for every layer:

* **Dense weights are stored (in, out)**, ``y = x @ W + b``: ``Dense(64, 10).params["weight"]`` has shape
  (64, 10), the transpose of ``torch.nn.Linear(64, 10).weight`` (10, 64). The recurrent layers follow it
  (``weight_ih`` is (input_size, gates * hidden), the transpose of PyTorch's ``weight_ih_l0``), and so do
  ``FixedPointRecurrent`` and ``Embedding`` (num_embeddings, embedding_dim), which matches PyTorch's.
  ``Conv2D``'s weight is (out_channels, in_channels, kh, kw), as in PyTorch.
* **Batch first**: features are (batch, features), images (batch, channels, height, width) (NCHW), sequences
  (batch, time, features).
* **Sizes first, options by keyword**: ``Dense(in_features, out_features, *, bias, init, rng)``,
  ``Conv2D(in_channels, out_channels, kernel_size, *, stride, padding, ...)``, ``LSTM(input_size, hidden_size,
  *, return_sequences, bidirectional, ...)``; every layer takes ``backend=`` and ``dtype=`` (default: the
  current backend and its float dtype) and a layer with weights takes ``rng=`` (a seed).
* **Losses take raw scores**: ``CrossEntropy`` applies the softmax itself (do not end the model in
  ``Softmax``); targets are class numbers, one-hot rows, or (MSE) values.
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
from .init import set_seed
from .io.model_files import load_model, save_model
from .layers import (
    GELU,
    GRU,
    LSTM,
    RNN,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    FixedPointRecurrent,
    Flatten,
    Layer,
    LayerNorm,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Reshape,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    architecture,
    build,
    register_layer,
)
from .losses import MSE, BinaryCrossEntropy, CrossEntropy, Loss
from .metrics import MAE, R2, Accuracy, BinaryAccuracy, Metric
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
from .training import (
    Callback,
    Checkpoint,
    EarlyStopping,
    GradientMonitor,
    HistoryWriter,
    Trainer,
    evaluate,
    fit,
    predict_classes,
    predict_logits,
)

__version__ = "0.1.0"

# Grouped as torch.nn / thinc.api group their exports, sorted within each group.
__all__ = [
    # layers: the base class, containers, and every built-in layer
    "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv2D", "Dense", "Dropout", "Embedding", "FixedPointRecurrent",
    "Flatten", "GELU", "GRU", "LSTM", "Layer", "LayerNorm", "LeakyReLU", "MaxPool2D", "RNN", "ReLU", "Reshape",
    "Sequential", "Sigmoid", "Softmax", "Tanh",
    # building models: ready-made architectures, descriptions and rebuilding, your own layer types
    "architecture", "build", "mlp", "register_layer", "set_seed",
    # losses
    "BinaryCrossEntropy", "CrossEntropy", "Loss", "MSE",
    # optimizers, learning-rate schedules, gradient clipping
    "AdaGrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "clip_grad_norm", "make_optimizer", "make_schedule",
    # metrics and prediction
    "Accuracy", "BinaryAccuracy", "MAE", "Metric", "R2", "evaluate", "predict_classes", "predict_logits",
    # training
    "Callback", "Checkpoint", "EarlyStopping", "GradientMonitor", "HistoryWriter", "Trainer", "fit",
    # model files and data
    "data", "load_model", "save_model",
    # backends and devices
    "Backend", "available_backends", "current_backend", "distributed", "get_backend", "set_backend", "use_backend",
    # checking and errors
    "BackpropError", "ConfigError", "DTypeError", "DataError", "DeviceMismatchError", "GradcheckError",
    "ModelFileError", "ShapeError", "TrainingError", "gradcheck",
]
