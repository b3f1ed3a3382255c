#!/usr/bin/env python
"""Register the explainer in the MLflow registry: ``python scripts/register_model.py --name medxgan-explainer``."""

import sys

from medxgan_monai.cli.register_model import main

if __name__ == "__main__":
    sys.exit(main())
