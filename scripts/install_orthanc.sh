#!/usr/bin/env bash
# Installs Debian's Orthanc PACS and its DICOMweb plugin, which the DICOM node tests and benchmark run against.
# Does nothing when Orthanc is installed; without root (or sudo) or apt it says so, and those tests are skipped.
set -uo pipefail
if command -v Orthanc >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_orthanc: not root and no sudo: the DICOM node tests against Orthanc will be skipped" >&2; exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_orthanc: no apt-get: the DICOM node tests against Orthanc will be skipped" >&2; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q orthanc orthanc-dicomweb >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q orthanc orthanc-dicomweb >/dev/null; } \
  || echo "install_orthanc: apt-get could not install orthanc: the DICOM node tests will be skipped" >&2
exit 0
