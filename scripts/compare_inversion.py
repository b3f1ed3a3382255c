#!/usr/bin/env python
"""medXGAN localization and cost by inversion strategy: ``python scripts/compare_inversion.py --limit 100``."""

import sys

from medxgan_monai.cli.compare_inversion import main

if __name__ == "__main__":
    sys.exit(main())
