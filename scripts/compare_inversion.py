#!/usr/bin/env python
"""medXGAN localization and cost by inversion strategy: ``python scripts/compare_inversion.py --limit 100``."""

import sys

import _repository  # noqa: F401  (the repository root on sys.path: benchmarks/ is not installed)

from benchmarks.compare_inversion import main

if __name__ == "__main__":
    sys.exit(main())
