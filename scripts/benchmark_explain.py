#!/usr/bin/env python
"""Explanation cost per method and image size: ``python scripts/benchmark_explain.py --sizes 64 128 256``."""

import sys

from medxgan_monai.cli.benchmark_explain import main

if __name__ == "__main__":
    sys.exit(main())
