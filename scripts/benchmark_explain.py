#!/usr/bin/env python
"""Explanation cost per method and image size: ``python scripts/benchmark_explain.py --sizes 64 128 256``."""

import sys

import _repository  # noqa: F401  (the repository root on sys.path: benchmarks/ is not installed)

from benchmarks.benchmark_explain import main

if __name__ == "__main__":
    sys.exit(main())
