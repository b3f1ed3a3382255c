#!/usr/bin/env python
"""Seconds per volume of every method, explained slice by slice: ``python scripts/benchmark_volumes.py``."""

import sys

import _repository  # noqa: F401  (the repository root on sys.path: benchmarks/ is not installed)

from benchmarks.benchmark_volumes import main

if __name__ == "__main__":
    sys.exit(main())
