"""Training: the loop, batch modes, callbacks and evaluation."""

from .batches import batch_bounds, batch_mode, parse_batch_size
from .callbacks import Callback, Checkpoint, EarlyStopping, GradientMonitor, HistoryWriter
from .metrics import evaluate, predict_classes, predict_logits
from .step import MicroBatch, TrainingStep
from .trainer import Trainer, fit

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "GradientMonitor", "HistoryWriter", "MicroBatch", "Trainer",
           "TrainingStep", "batch_bounds", "batch_mode", "evaluate", "fit", "parse_batch_size", "predict_classes",
           "predict_logits"]
