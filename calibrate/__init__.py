"""Kernel calibration for servesim: Triton + vendor microbenchmarks on a real GPU.

``calibrate.grids`` is importable without torch/triton (CPU CI tests it); everything else
needs a CUDA machine with torch and triton.  Entry point: ``python -m calibrate.run``.
"""
