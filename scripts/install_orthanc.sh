#!/usr/bin/env bash
# Installs Debian's Orthanc PACS and its DICOMweb plugin, which the DICOM node tests and benchmark run against, and
# dicom3tools, whose dciodvfy checks every derived DICOM object against its IOD in the tests.
# Does nothing when both are installed; without root (or sudo) or apt it says so, and those tests are skipped.
set -uo pipefail
if command -v Orthanc >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1; then
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
PACKAGES="orthanc orthanc-dicomweb dicom3tools"
$SUDO apt-get install -y -q $PACKAGES >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $PACKAGES >/dev/null; } \
  || echo "install_orthanc: apt-get could not install $PACKAGES: the node and dciodvfy tests will be skipped" >&2
exit 0
