"""The head shared by the MR and head CT phantoms: scalp, skull, CSF, folded grey and white
matter, thalami and ventricles, placed in the field of view."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_scan_classifier.phantoms.common import Grid, paint_ellipsoid, smooth_field, vary

MR_TISSUES: dict[str, tuple[float, float]] = {
    "background": (0.0, 0.0),
    "scalp": (720.0, 50.0),
    "skull": (90.0, 20.0),
    "csf": (160.0, 25.0),
    "grey_matter": (430.0, 25.0),
    "white_matter": (620.0, 30.0),
}
# The same head in Hounsfield units (a non-contrast head CT), tissue ids as in MR_TISSUES.
HEAD_CT_TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "scalp": (35.0, 6.0),
    "skull": (1100.0, 120.0),
    "csf": (8.0, 3.0),
    "grey_matter": (38.0, 3.0),
    "white_matter": (28.0, 3.0),
}
LESION = "lesion"  # the last tissue name of every phantom
MR_ID = {name: i for i, name in enumerate(MR_TISSUES)}


def head_pose(
    rng: np.random.Generator, affine: np.ndarray, shape: Sequence[int]
) -> tuple[Grid, np.ndarray]:
    """Head placement and scalp half-axes (I, P, L) in mm, scaled to fit the field of view."""
    span = Grid.from_affine(affine, shape, (0.0, 0.0, 0.0), 0.0).fov
    scale = min(1.0, 0.9 * span[1] / 2 / 92.0, 0.9 * span[2] / 2 / 74.0) * rng.uniform(0.92, 1.04)
    head = np.array([86.0, 92.0, 74.0]) * scale
    top = -span[0] / 2 + head[0] + rng.uniform(2.0, 8.0)  # keep the vertex in the field of view
    centre = (top, rng.uniform(-4.0, 4.0), rng.uniform(-4.0, 4.0))
    return Grid.from_affine(affine, shape, centre, math.radians(rng.uniform(-5.0, 5.0))), head


def paint_head(labels: np.ndarray, grid: Grid, head: np.ndarray, rng: np.random.Generator) -> float:
    """Scalp, skull, CSF, folded grey/white matter; returns white matter's smallest half-axis."""
    for name, scale in (("scalp", 1.0), ("skull", 0.93), ("csf", 0.88)):
        paint_ellipsoid(labels, grid, grid.centre, head * scale, MR_ID[name])
    full = tuple(slice(None) for _ in range(3))
    brain = head * 0.86
    w, v, u = grid.local(full, grid.centre, grid.angle)
    radius = np.sqrt((w / brain[0]) ** 2 + (v / brain[1]) ** 2 + (u / brain[2]) ** 2)
    folds = smooth_field(rng, labels.shape, grid.spacing, cell_mm=rng.uniform(5.5, 7.0))
    labels[radius <= 1.0] = MR_ID["grey_matter"]
    labels[(radius <= 1.0) & (radius > 1.0 + 0.25 * (folds + 0.6))] = MR_ID["csf"]  # sulci
    white = rng.uniform(0.78, 0.84)
    gyri = radius <= np.minimum(white + 0.12 * folds, 0.93)
    labels[gyri & (labels == MR_ID["grey_matter"])] = MR_ID["white_matter"]
    _paint_deep_structures(labels, grid, brain, rng)
    return float(min(brain) * (white - 0.2))


def _paint_deep_structures(
    labels: np.ndarray, grid: Grid, brain: np.ndarray, rng: np.random.Generator
) -> None:
    """Thalami (grey) and lateral ventricles (CSF), mirrored about the midline."""
    ventricle = brain * np.array([vary(rng, 0.16, 0.2), 0.42, vary(rng, 0.08, 0.25)])
    for side in (-1, 1):
        thalamus = grid.to_world(0.05 * brain[0], 0.12 * brain[1], side * 0.14 * brain[2])
        paint_ellipsoid(labels, grid, thalamus, brain * 0.13, MR_ID["grey_matter"])
        centre = grid.to_world(-0.1 * brain[0], -0.05 * brain[1], side * 0.12 * brain[2])
        paint_ellipsoid(labels, grid, centre, ventricle, MR_ID["csf"], angle=side * 0.15)
