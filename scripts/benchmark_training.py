#!/usr/bin/env python
"""Training throughput with and without mixed precision: ``python scripts/benchmark_training.py --device cuda``."""

import sys

import _repository  # noqa: F401  (the repository root on sys.path: benchmarks/ is not installed)

from benchmarks.benchmark_training import main

if __name__ == "__main__":
    sys.exit(main())
