"""A throwaway Orthanc PACS (Debian's ``orthanc`` and ``orthanc-dicomweb`` packages) for tests, benchmarks and demos."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["OrthancServer", "free_port"]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    """A TCP port on loopback that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OrthancServer:
    """Start Orthanc on loopback with a configuration and storage in ``folder``; stop it on exit.

    Args:
        folder: scratch folder (configuration, storage, index, log).
        ae_title: Orthanc's AE title.
        modalities: DICOM modalities Orthanc may send to, ``{name: (ae_title, host, port)}``.

    Example::

        with OrthancServer(tmp_path, modalities={"medxgan": ("MEDXGAN", "127.0.0.1", 11112)}) as orthanc:
            orthanc.upload(Path("scan.dcm")); orthanc.rest("/studies")
    """

    def __init__(self, folder: str | os.PathLike, ae_title: str = "ORTHANC", modalities: dict | None = None) -> None:
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.modalities = dict(modalities or {})
        self.dicom_port, self.http_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @staticmethod
    def executable() -> str | None:
        """The Orthanc program, or ``None`` when it is not installed."""
        return shutil.which("Orthanc")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> OrthancServer:
        program = self.executable()
        if program is None:
            raise FileNotFoundError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medxgan-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {name: list(entry) for name, entry in self.modalities.items()},
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=1))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([program, str(self.folder / "orthanc.json")], stdout=log, stderr=log)
        self._log = log
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.rest("/system")
                return self
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"Orthanc did not start; see {self.folder / 'orthanc.log'}")

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def rest(self, path: str, data: bytes | None = None, method: str | None = None):
        """Call Orthanc's REST API; returns the decoded JSON answer."""
        request = urllib.request.Request(self.url + path, data=data, method=method or ("POST" if data else "GET"))
        with urllib.request.urlopen(request, timeout=60) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def upload(self, path: str | os.PathLike) -> str:
        """Store a DICOM file through the REST API; returns Orthanc's instance ID."""
        return self.rest("/instances", data=Path(path).read_bytes())["ID"]

    def send_to_modality(self, modality: str, instance_ids: list[str]) -> None:
        """Ask Orthanc to C-STORE instances to one of its modalities (as a PACS routing rule would)."""
        self.rest(f"/modalities/{modality}/store", data=json.dumps({"Resources": instance_ids}).encode())
