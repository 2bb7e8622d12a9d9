"""Time classifying a 512x512x300 CT with a 128^3 cnn3d, plus its Grad-CAM, on this machine.

Writes a CT-like int16 series (one DICOM file per slice, via ``dicom_write``) to a temporary
folder, then repeats in this one process: load it with ``load_scans``; ``classify`` it (resample
to the model grid, predict, Monte Carlo dropout); ``grad_cam`` it (map back on the 512x512x300
grid). Prints the median of each part over the runs, and the first (cold) run apart, since it
includes building the compiled functions.

Peer, timed in the same runs: the naive path, ``scipy.ndimage.zoom`` (linear) to the model grid,
the CT window, then ``model.predict``, against our resample + predict (no uncertainty).

    python benchmarks/bench_inference.py [--slices 300] [--size 512] [--grid 128] [--runs 5]
    KERAS_BACKEND=jax python benchmarks/bench_inference.py --gpu   # GPU figures, or a skip line
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from scipy import ndimage

from napari_scan_classifier.backend import device_name
from napari_scan_classifier.inference import classify
from napari_scan_classifier.io import load_scans
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.models import Bundle, BundleMetadata, build_cnn3d
from napari_scan_classifier.preprocess import normalise
from napari_scan_classifier.saliency import grad_cam
from napari_scan_classifier.volume import Volume, lps_to_world

WINDOW = {"kind": "ct_window", "center": 40.0, "width": 400.0}
PARTS = ("load", "resample", "predict", "uncertainty", "grad_cam", "classify+grad_cam", "all")


def make_ct(slices: int, size: int) -> Volume:
    """An axial CT: an elliptical body of noisy soft tissue (HU) in air, 0.7 x 0.7 x 1.25 mm."""
    rng = np.random.default_rng(0)
    y, x = np.ogrid[:size, :size]
    body = ((y - size / 2) / (0.35 * size)) ** 2 + ((x - size / 2) / (0.45 * size)) ** 2 <= 1
    hu = rng.integers(-20, 21, size=(slices, size, size), dtype=np.int16)
    hu[:, body] += 40
    hu[:, ~body] -= 1000
    affine_lps = np.array([[0.7, 0, 0, -180], [0, 0.7, 0, -180], [0, 0, 1.25, -300], [0, 0, 0, 1]])
    # LPS columns are (x, y, z) index axes; reorder them to the (z, y, x) array axes.
    affine = lps_to_world(affine_lps[:, [2, 1, 0, 3]])
    return Volume(hu, affine, modality="CT")


def make_bundle(grid: int) -> Bundle:
    keras.utils.set_random_seed(0)
    meta = BundleMetadata(
        name="benchmark",
        version=1,
        classes=["normal", "lesion"],
        modality="CT",
        task="volume",
        input_shape=(grid, grid, grid),
        target_spacing_mm=None,
        intensity=WINDOW,
        architecture="cnn3d",
    )
    return Bundle(meta, build_cnn3d((grid, grid, grid, 1), 2))


def ours(folder: Path, bundle: Bundle, passes: int) -> dict[str, float]:
    start = time.perf_counter()
    volume = load_scans(folder).volumes[0]
    loaded = time.perf_counter()
    prediction = classify(volume, bundle, uncertainty_passes=passes)
    classified = time.perf_counter()
    saliency = grad_cam(volume, bundle)
    done = time.perf_counter()
    assert saliency.values.shape == volume.shape
    return {
        "load": loaded - start,
        "resample": prediction.timings["preprocess"],
        "predict": prediction.timings["predict"],
        "uncertainty": prediction.timings["uncertainty"],
        "grad_cam": done - classified,
        "classify+grad_cam": done - loaded,
        "all": done - start,
    }


def ours_plain(volume: Volume, bundle: Bundle) -> float:
    """Resample + predict only: what the peer does."""
    start = time.perf_counter()
    classify(volume, bundle, method="none")
    return time.perf_counter() - start


def peer(volume: Volume, model: keras.Model, grid: int) -> float:
    start = time.perf_counter()
    factors = [grid / n for n in volume.shape]
    x = ndimage.zoom(volume.voxels.astype(np.float32), factors, order=1)
    model.predict(normalise(x, WINDOW)[None, ..., None], verbose=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--grid", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--passes", type=int, default=10, help="MC dropout passes")
    parser.add_argument(
        "--gpu", action="store_true", help="measure on a GPU; skip (exit 0) where none is visible"
    )
    args = parser.parse_args()
    if args.gpu and not device_name().startswith("GPU"):
        print(f"skipped: no GPU visible to Keras' {keras.backend.backend()} backend")
        return
    bundle = make_bundle(args.grid)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"writing {args.slices} slices of {args.size}x{args.size} int16 ...", flush=True)
        write_series(make_ct(args.slices, args.size), folder, series_description="benchmark")
        cold = ours(folder, bundle, args.passes)
        runs, plain, naive = [], [], []
        volume = load_scans(folder).volumes[0]
        peer(volume, bundle.model, args.grid)  # build the peer's predict function too
        for _ in range(args.runs):
            runs.append(ours(folder, bundle, args.passes))
            plain.append(ours_plain(volume, bundle))
            naive.append(peer(volume, bundle.model, args.grid))
    print(f"device: {device_name()}; model grid {args.grid}^3; {args.passes} MC dropout passes")
    print(f"{'part':>18}  median s  (runs)                      first run")
    for part in PARTS:
        values = [run[part] for run in runs]
        listed = ", ".join(f"{v:.2f}" for v in values)
        print(f"{part:>18}  {statistics.median(values):8.3f}  ({listed})  {cold[part]:.2f}")
    ours_median, peer_median = statistics.median(plain), statistics.median(naive)
    print(
        f"resample + predict: ours {ours_median:.3f} s, scipy zoom + model.predict "
        f"{peer_median:.3f} s, ratio {ours_median / peer_median:.2f} (below 1 = faster)"
    )


if __name__ == "__main__":
    main()
