"""Importing this puts the repository root on ``sys.path``, so that a script can import ``benchmarks``.

``benchmarks/`` is not installed with the package (pyproject installs ``medxgan_monai`` only), and ``python
scripts/<name>.py`` puts ``scripts/`` on the path, not the repository root. This module sits beside the scripts, so
they find it, and it adds the root by its own location, whatever the current directory.
"""

import sys
from pathlib import Path

REPOSITORY_ROOT = str(Path(__file__).resolve().parents[1])
if REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, REPOSITORY_ROOT)
