#!/usr/bin/env python
"""medXGAN ablation study on the demo benchmark: ``python scripts/ablation.py [--variants ...] [--train]``."""

import sys

from medxgan_monai.cli.ablation import main

if __name__ == "__main__":
    sys.exit(main())
