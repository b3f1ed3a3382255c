#!/usr/bin/env python
"""DICOM node throughput and latency against Orthanc: ``python scripts/benchmark_node.py --sizes 64 256``."""

import sys

from medxgan_monai.cli.benchmark_node import main

if __name__ == "__main__":
    sys.exit(main())
