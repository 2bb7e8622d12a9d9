"""Loading a CT series from a local Orthanc over DICOMweb against loading the same files from disk.

Starts Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) with a throw-away configuration,
uploads a 512x512 int16 series with STOW-RS, then alternates the two loads in this process and
prints medians, their ratio, and the peak Python-traced memory of each. Retrieval streams each
instance to a temporary file before the loader reads it, so its peak should stay close to the
disk load's (the study is never held twice in memory).

    python benchmarks/bench_dicomweb.py [--slices 120] [--size 512] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom

from napari_scan_classifier.io.dicom import load_dicom
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.io.dicomweb import Credentials, DicomWebServer, load_url
from napari_scan_classifier.volume import Volume, lps_to_world

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from orthanc_server import PASSWORD, USER, running_orthanc


def make_series(folder: Path, slices: int, size: int) -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, size=(slices, size, size), dtype=np.int16)
    affine = np.array([[0, 0, 0.7, -180], [0, 0.7, 0, -180], [1.25, 0, 0, -300], [0, 0, 0, 1]])
    write_series(Volume(hu, lps_to_world(affine), modality="CT"), folder, series_description="b")


def seconds(load) -> float:
    start = time.perf_counter()
    load()
    return time.perf_counter() - start


def peak_mib(load) -> tuple[float, np.ndarray]:
    """Peak Python-traced memory of one load (tracemalloc slows it: timed apart)."""
    tracemalloc.start()
    voxels = load()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak, voxels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "ct"
        make_series(folder, args.slices, args.size)
        with running_orthanc(Path(scratch) / "orthanc") as orthanc:
            credentials = Credentials(USER, PASSWORD)
            server = DicomWebServer(orthanc.dicomweb, credentials, timeout=120)
            datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
            server.store(datasets)
            first = datasets[0]
            del datasets
            url = f"{orthanc.dicomweb}/studies/{first.StudyInstanceUID}"
            url += f"/series/{first.SeriesInstanceUID}"

            def from_disk() -> np.ndarray:
                return load_dicom(folder).volumes[0].voxels

            def from_web() -> np.ndarray:
                return load_url(url, credentials=credentials).volumes[0].voxels

            times: dict[str, list[float]] = {"disk": [], "web": []}
            for _ in range(args.runs):
                times["disk"].append(seconds(from_disk))
                times["web"].append(seconds(from_web))
            m_disk, on_disk = peak_mib(from_disk)
            m_web, on_web = peak_mib(from_web)
            assert np.array_equal(on_disk, on_web)
    megabytes = args.slices * args.size**2 * 2 / 2**20
    t_disk, t_web = statistics.median(times["disk"]), statistics.median(times["web"])
    print(f"series: {args.slices} x {args.size}^2 int16 ({megabytes:.0f} MiB of pixels)")
    print(f"disk:      {t_disk:6.2f} s  peak {m_disk:7.1f} MiB traced")
    print(f"DICOMweb:  {t_web:6.2f} s  peak {m_web:7.1f} MiB traced")
    print(f"ratio DICOMweb/disk: time {t_web / t_disk:.2f}, peak memory {m_web / m_disk:.2f}")


if __name__ == "__main__":
    main()
