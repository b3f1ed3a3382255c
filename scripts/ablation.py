#!/usr/bin/env python
"""medXGAN ablation study on the demo benchmark: ``python scripts/ablation.py [--variants ...] [--train]``."""

import sys

import _repository  # noqa: F401  (the repository root on sys.path: benchmarks/ is not installed)

from benchmarks.ablation import main

if __name__ == "__main__":
    sys.exit(main())
