"""Layers: each one's forward pass and backward pass (the chain rule) side by side."""

from .activations import ACTIVATIONS, GELU, Activation, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh, activation
from .base import Layer
from .dense import Dense
from .sequential import Sequential

__all__ = ["ACTIVATIONS", "GELU", "Activation", "Dense", "Layer", "LeakyReLU", "ReLU", "Sequential", "Sigmoid",
           "Softmax", "Tanh", "activation"]
