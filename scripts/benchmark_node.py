#!/usr/bin/env python
"""DICOM node throughput and latency against Orthanc: ``python scripts/benchmark_node.py --sizes 64 256``."""

import sys

import _repository  # noqa: F401  (the repository root on sys.path: benchmarks/ is not installed)

from benchmarks.benchmark_node import main

if __name__ == "__main__":
    sys.exit(main())
