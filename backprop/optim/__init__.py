"""Optimizers: update the parameters from their gradients."""

from .sgd import SGD, sgd

__all__ = ["SGD", "sgd"]
