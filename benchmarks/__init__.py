"""Benchmarks and studies of medxgan-monai: run from the repository, not installed with the package.

Each module is one command (``python scripts/<module>.py``, or ``python -m benchmarks.<module>`` from the repository
root); ``_benchmarking`` holds what they share.
"""
