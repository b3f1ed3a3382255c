#!/usr/bin/env python
"""Training throughput with and without mixed precision: ``python scripts/benchmark_training.py --device cuda``."""

import sys

from medxgan_monai.cli.benchmark_training import main

if __name__ == "__main__":
    sys.exit(main())
