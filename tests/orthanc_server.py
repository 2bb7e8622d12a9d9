"""A real Orthanc with its DICOMweb plugin for the tests: started on 127.0.0.1 on free ports with a
throw-away configuration and storage folder, a registered user, and stopped afterwards.

Orthanc comes from Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (CI installs them);
where the binary or the plugin is missing, :func:`orthanc_or_skip` skips with the reason.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

USER, PASSWORD = "radiologist", "correct-horse-battery"
_PLUGIN_NAME = "libOrthancDicomWeb.so"
_START_S = 60.0


def _plugin() -> Path | None:
    """The DICOMweb plugin as the package installed it (``dpkg -L orthanc-dicomweb``)."""
    if shutil.which("dpkg"):
        listed = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False
        ).stdout.split()
        for name in listed:
            if name.endswith(_PLUGIN_NAME) and Path(name).is_file():
                return Path(name)
    fallback = Path("/usr/share/orthanc/plugins") / _PLUGIN_NAME
    return fallback if fallback.is_file() else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Orthanc:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"


def orthanc_or_skip() -> tuple[str, Path]:
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    plugin = _plugin()
    if binary is None or plugin is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt: orthanc-dicomweb)")
    return binary, plugin


@contextlib.contextmanager
def running_orthanc(folder: Path) -> Iterator[Orthanc]:
    """Start Orthanc (basic authentication on, one user) and stop it, whatever happens."""
    binary, plugin = orthanc_or_skip()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "scan-classifier-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    with (folder / "orthanc.log").open("w") as log:
        process = subprocess.Popen(
            [binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        server = Orthanc(port)
        _wait_until_up(server, process, folder / "orthanc.log")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(server: Orthanc, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + _START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited at start:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(requests.ConnectionError):
            answer = requests.get(f"{server.dicomweb}/studies", auth=(USER, PASSWORD), timeout=2)
            if answer.status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer within {_START_S:g} s:\n{log.read_text()[-2000:]}")
