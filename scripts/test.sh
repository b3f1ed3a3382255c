#!/usr/bin/env bash
# Sets up ./.venv (scripts/setup.sh) and Orthanc for the DICOM node tests (scripts/install_orthanc.sh), then runs the
# linters and the test suite.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_orthanc.sh
.venv/bin/ruff check medxgan_monai scripts tests
.venv/bin/ruff format --check medxgan_monai scripts tests
.venv/bin/python -m pytest -q tests "$@"
