"""Time loading a CT series with napari-scan-classifier and with SimpleITK (medians, ratio).

Writes a 512x512x300 int16 CT series (one file per slice, via ``dicom_write``) to a temporary
folder, then alternates the two loaders several times in this one process so both see the same
warm file cache. SimpleITK reads the way its docs show: ``GetGDCMSeriesFileNames`` then an
``ImageSeriesReader``, and the voxels are taken as a NumPy view (no extra copy).

Wall-clock and CPU time (all threads of this process) are printed for each loader: on a shared
machine the CPU time is the steadier figure, since it does not count waiting for a busy core.

    python benchmarks/bench_io.py [--slices 300] [--size 512] [--runs 9] [--workers N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK

from napari_scan_classifier.io.dicom import load_dicom
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.volume import Volume, lps_to_world


def make_series(folder: Path, slices: int, size: int) -> np.ndarray:
    """A CT-like volume (HU from -1024 to ~2000) written as one file per slice."""
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, size=(slices, size, size), dtype=np.int16)
    affine_lps = np.array([[0, 0, 0.7, -180], [0, 0.7, 0, -180], [1.25, 0, 0, -300], [0, 0, 0, 1]])
    write_series(
        Volume(hu, lps_to_world(affine_lps), modality="CT"), folder, series_description="benchmark"
    )
    return hu


def load_ours(folder: Path, workers: int | None) -> np.ndarray:
    result = load_dicom(folder, max_workers=workers)
    return result.volumes[0].voxels


def load_sitk(folder: Path) -> SimpleITK.Image:
    reader = SimpleITK.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def timed(load, *args) -> tuple[tuple[float, float], object]:
    """((wall seconds, CPU seconds of the whole process), what ``load`` returned)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = load(*args)
    return (time.perf_counter() - start, time.process_time() - cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--workers", type=int, help="thread pool size (default: automatic)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"writing {args.slices} slices of {args.size}x{args.size} int16 ...", flush=True)
        truth = make_series(folder, args.slices, args.size)
        ours, theirs = [], []
        for _ in range(args.runs):
            seconds, voxels = timed(load_ours, folder, args.workers)
            ours.append(seconds)
            seconds, image = timed(load_sitk, folder)
            theirs.append(seconds)
        reference = SimpleITK.GetArrayViewFromImage(image)  # a view: `image` must stay alive
        if not (np.array_equal(voxels, truth) and np.array_equal(reference, truth)):
            raise SystemExit("the loaders disagree with the written volume")
    report("napari-scan-classifier", ours)
    report("SimpleITK", theirs)
    for column, label in ((0, "wall-clock"), (1, "CPU")):
        ratio = statistics.median(t[column] for t in ours) / statistics.median(
            t[column] for t in theirs
        )
        print(f"ratio of {label} medians, ours / SimpleITK: {ratio:.2f} (below 1 = faster)")


def report(name: str, times: list[tuple[float, float]]) -> None:
    wall, cpu = [t[0] for t in times], [t[1] for t in times]
    print(
        f"{name:<22}: median {statistics.median(wall):.3f} s, best {min(wall):.3f} s, "
        f"CPU median {statistics.median(cpu):.3f} s, best {min(cpu):.3f} s"
    )
    print(f"{'':<22}  runs (wall/CPU s): " + ", ".join(f"{w:.3f}/{c:.3f}" for w, c in times))


if __name__ == "__main__":
    main()
