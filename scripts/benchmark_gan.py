#!/usr/bin/env python
"""GAN training throughput and peak memory at several sizes: ``python scripts/benchmark_gan.py --sizes 64 128 256``."""

import sys

import _repository  # noqa: F401  (the repository root on sys.path: benchmarks/ is not installed)

from benchmarks.benchmark_gan import main

if __name__ == "__main__":
    sys.exit(main())
