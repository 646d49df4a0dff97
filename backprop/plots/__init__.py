"""Plots drawn with matplotlib on the host (an optional dependency): :mod:`.training` (learning curves, the
confusion matrix) and :mod:`.recurrent` (gradient norms through time)."""
