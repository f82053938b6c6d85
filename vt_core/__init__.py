"""vt_core: a lean, kernel-optimized post-training core for small reasoning language models."""

__version__ = "0.1.0"
