"""Benchmarks: this library against a hand-written NumPy loop and PyTorch eager, in the same run.

Run ``python -m benchmarks --help``. Timings are reported as ratios between implementations measured
interleaved in one process, never as absolute targets: these machines are shared and noisy.
"""
