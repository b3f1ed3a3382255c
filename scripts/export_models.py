#!/usr/bin/env python
"""Export the classifier (TorchScript), generator and encoder (torch.export): ``python scripts/export_models.py``."""

import sys

from medxgan_monai.cli.export_models import main

if __name__ == "__main__":
    sys.exit(main())
