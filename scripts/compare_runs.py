#!/usr/bin/env python
"""One method compared between two evaluation runs, image by image: ``python scripts/compare_runs.py RUN_A RUN_B``."""

import sys

import _repository  # noqa: F401  (the repository root on sys.path: benchmarks/ is not installed)

from benchmarks.compare_runs import main

if __name__ == "__main__":
    sys.exit(main())
