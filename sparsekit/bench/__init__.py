"""Latency benchmarks: layer-level (formats and PyTorch's peers against dense) and the built-in model demo."""
