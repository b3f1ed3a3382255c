#!/usr/bin/env python
"""Build the demo benchmark: ``python scripts/make_demo_data.py OUT_DIR [--size 64] [--seed 0] ...``."""

import sys

from medxgan_monai.cli.make_demo_data import main

if __name__ == "__main__":
    sys.exit(main())
