"""Orthanc on loopback as the tests' PACS: one launcher for the server, outage and pull tests.

Debian's `orthanc` (and `orthanc-dicomweb` for QIDO/WADO/STOW); tests skip with the reason when they are absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from ports import free_port

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = next((p for p in (Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
                                    Path("/usr/lib/orthanc/libOrthancDicomWeb.so")) if p.exists()), None)


class OrthancPacs:
    """An Orthanc process with its own storage under ``folder``, on free loopback ports unless given (a restart
    after an outage reuses them). ``modalities``: Orthanc's DicomModalities (C-MOVE destinations)."""

    def __init__(self, folder: Path, modalities: dict[str, list[Any]] | None = None, dicomweb: bool = False,
                 dicom_port: int | None = None, http_port: int | None = None, name: str = "nmkit-test"):
        self.folder = Path(folder)
        self.dicom_port, self.http_port = dicom_port or free_port(), http_port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = {"Name": name, "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
                "DicomAet": "ORTHANC", "DicomPort": self.dicom_port, "HttpPort": self.http_port,
                "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomModalities": modalities or {},
                "DicomCheckCalledAet": False, "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
                "StableAge": 1, "ConcurrentJobs": 1, "HttpTimeout": 30, "DicomScuTimeout": 30}
        if dicomweb:
            conf["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        (self.folder / "orthanc.json").write_text(json.dumps(conf))
        self.log = open(self.folder / "orthanc.log", "a")
        self.proc = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/system")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"Orthanc did not start; see {self.folder / 'orthanc.log'}")
                time.sleep(0.2)

    @property
    def dimse(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def get(self, path: str) -> Any:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10).read())

    def upload(self, path: Path) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances", data=Path(path).read_bytes(), method="POST")
        urllib.request.urlopen(req, timeout=30).read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
