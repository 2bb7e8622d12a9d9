"""How well and how fast does a scan tell its modality and body region from its voxels alone?

Scans without header fields (as a NIfTI from elsewhere gives them): brain MR phantoms (varied
contrast, field of view, orientation, bias and noise), body CT phantoms and head CT phantoms,
plus the brain MRs with their intensities scaled (x3.7 + 200). Printed: what
``choice.identify`` calls each kind, and its time per scan on a 300 x 512 x 512 CT against the
peer measured on the same scan, ``applicability.summarise`` (the input checks every
classification runs).

    python benchmarks/bench_choice.py [--n 30]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from napari_scan_classifier.applicability import summarise
from napari_scan_classifier.choice import identify
from napari_scan_classifier.phantoms import make_ct_phantom, make_head_ct_phantom
from napari_scan_classifier.phantoms.brain import make_brain_mr_phantom
from napari_scan_classifier.volume import Volume


def bare(volume: Volume, scale: float = 1.0, offset: float = 0.0) -> Volume:
    voxels = volume.voxels.astype(np.float32) * scale + offset
    return Volume(voxels, volume.affine, "OT", {})


def accuracy(n: int) -> None:
    kinds: dict[str, tuple[str, Callable[[int], Volume]]] = {
        "brain MR": ("MR head", lambda s: bare(make_brain_mr_phantom(s).volume)),
        "brain MR x3.7+200": ("MR head", lambda s: bare(make_brain_mr_phantom(s).volume, 3.7, 200)),
        "body CT": ("CT chest/abdomen/pelvis", lambda s: bare(make_ct_phantom(s).volume)),
        "head CT": ("CT head", lambda s: bare(make_head_ct_phantom(s).volume)),
    }
    for kind, (expected, make) in kinds.items():
        called = Counter(identify(make(1000 + seed)).describe() for seed in range(n))
        print(f"{kind:>18}: {called[expected]}/{n} '{expected}'; all: {dict(called)}")


def speed() -> None:
    small = make_ct_phantom(3).volume
    voxels = ndimage.zoom(small.voxels, (300 / small.shape[0], 4, 4), order=0)
    affine = small.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([small.shape[0] / 300, 0.25, 0.25])
    volume = Volume(voxels, affine, "OT", {})
    timings = {}
    for name, step in (("identify", identify), ("summarise", summarise)):
        step(volume)
        start = time.perf_counter()
        for _ in range(3):
            step(volume)
        timings[name] = (time.perf_counter() - start) / 3
    print(
        f"{voxels.shape} CT: identify {timings['identify']:.2f} s, summarise (peer) "
        f"{timings['summarise']:.2f} s, ratio {timings['identify'] / timings['summarise']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="phantoms per kind")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}")
    accuracy(args.n)
    speed()


if __name__ == "__main__":
    main()
