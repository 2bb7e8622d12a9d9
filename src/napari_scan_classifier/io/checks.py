"""Checks at the edge: what a reader builds from a file's header must be usable geometry.

Headers are untrusted: a NaN position, a zero pixel spacing or two parallel direction vectors
would give a NaN or singular affine that breaks every later step (resampling, saving, saliency).
Readers call these before anything reaches a :class:`~napari_scan_classifier.volume.Volume`.
"""

from __future__ import annotations

import math

import numpy as np

MAX_COORDINATE_MM = 1e6  # a kilometre: anything further from the scanner's origin is damage
MAX_SPACING_MM = 1e4
ORTHONORMAL_TOL = 1e-3  # direction cosines in real headers agree to ~1e-6


def finite_positive(value: float | None, limit: float = MAX_SPACING_MM) -> float | None:
    """``value`` when it is a usable length in mm, else None."""
    if value is None or not math.isfinite(value) or not 0 < value <= limit:
        return None
    return float(value)


def position_problem(position: np.ndarray | None) -> str | None:
    if position is None:
        return None
    position = position.tolist() if isinstance(position, np.ndarray) else position
    if not all(map(math.isfinite, position)):
        return "its image position (ImagePositionPatient) is not a finite number"
    if max(map(abs, position)) > MAX_COORDINATE_MM:
        return "its image position (ImagePositionPatient) lies over a kilometre from the origin"
    return None


def orientation_problem(orientation: tuple[float, ...] | None) -> str | None:
    """Why two direction cosines are not perpendicular unit vectors, or None (plain floats:
    this runs once per slice, where numpy's call overhead would dominate)."""
    if orientation is None:
        return None
    if not all(map(math.isfinite, orientation)):
        return "its image orientation (ImageOrientationPatient) is not a finite number"
    x1, y1, z1, x2, y2, z2 = orientation
    norms = math.hypot(x1, y1, z1), math.hypot(x2, y2, z2)
    cosine = 0.0 + x1 * x2 + y1 * y2 + z1 * z2  # as sum() adds: -0.0 reads as 0
    if max(abs(norms[0] - 1), abs(norms[1] - 1)) > ORTHONORMAL_TOL or abs(cosine) > ORTHONORMAL_TOL:
        return (
            "its image orientation (ImageOrientationPatient) is not two perpendicular unit "
            f"vectors (lengths {norms[0]:.3g} and {norms[1]:.3g}, cosine {cosine:.3g})"
        )
    return None


def spacing_problem(spacing: tuple[float, ...] | None) -> str | None:
    if spacing is None:
        return None
    if not all(map(finite_positive, spacing)):
        shown = "\\".join(f"{v:g}" for v in spacing)
        return f"its pixel spacing ({shown}) is not two positive finite lengths in mm"
    return None


def affine_problem(affine: np.ndarray) -> str | None:
    """Why a 4x4 affine cannot place voxels in space (non-finite, singular), or None."""
    affine = np.asarray(affine, float)
    if not np.all(np.isfinite(affine)):
        return "its affine is not finite"
    columns = affine[:3, :3]
    lengths = np.linalg.norm(columns, axis=0)
    if np.any(lengths == 0) or abs(np.linalg.det(columns)) < 1e-6 * np.prod(lengths):
        return "its affine is singular (voxel axes of zero length or parallel)"
    return None
