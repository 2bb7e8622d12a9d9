"""Anatomically plausible augmentation in NumPy/SciPy (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_scan_classifier.preprocess import normalise

MAX_ROTATION_DEG = 10.0
MAX_SCALING = 0.10
MAX_INTENSITY_SCALE = 0.10
MAX_INTENSITY_SHIFT = 0.05  # in units of the case's intensity SD
MAX_NOISE = 0.05  # Gaussian noise SD, in units of the case's intensity SD
MAX_BIAS = 0.2  # spread of the log of an MR bias field
MAX_GAIN = 3.0  # an MR scan's arbitrary unit: x 1/3 to x 3
BIAS_NODES = 4  # control points per axis of the bias field: smooth over the head


def augment(
    volume: np.ndarray,
    axes: Sequence[int],
    rng: np.random.Generator,
    strength: float = 1.0,
    intensity: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """One random, anatomically plausible variant of a (D, H, W) volume (see module doc).

    ``axes`` are the volume's (superior-inferior, left-right) array axes. With an MR
    ``intensity`` recipe (anything but a CT window), the scan is first given a smooth bias field
    and a global gain (:func:`mr_intensity`), then normalised again by that recipe, as a scan
    from another coil or scanner would be.
    """
    si_axis, lr_axis = int(axes[0]), int(axes[1])
    out = np.flip(volume, axis=lr_axis) if rng.random() < 0.5 else volume
    if intensity is not None and intensity.get("kind") != "ct_window" and strength > 0:
        out = normalise(mr_intensity(out, rng, strength), intensity)
    angle = rng.uniform(-1, 1) * MAX_ROTATION_DEG * strength
    scale = 1.0 + rng.uniform(-1, 1) * MAX_SCALING * strength
    out = _rotate_and_scale(out, si_axis, angle, scale)
    spread = float(out.std()) or 1.0
    gain = 1.0 + rng.uniform(-1, 1) * MAX_INTENSITY_SCALE * strength
    shift = rng.uniform(-1, 1) * MAX_INTENSITY_SHIFT * strength * spread
    noise = rng.standard_normal(out.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(0, MAX_NOISE * strength) * spread)
    return (out * np.float32(gain) + np.float32(shift) + noise).astype(np.float32, copy=False)


def _rotate_and_scale(volume: np.ndarray, si_axis: int, degrees: float, scale: float) -> np.ndarray:
    """Rotate about the superior-inferior axis and zoom by ``scale``, about the centre."""
    a, b = (axis for axis in range(3) if axis != si_axis)
    theta = math.radians(degrees)
    matrix = np.eye(3)
    matrix[a, a] = matrix[b, b] = math.cos(theta)
    matrix[a, b], matrix[b, a] = -math.sin(theta), math.sin(theta)
    matrix /= scale  # output -> input coordinates: scale > 1 samples a smaller region
    centre = (np.asarray(volume.shape, dtype=float) - 1) / 2
    offset = centre - matrix @ centre
    return ndimage.affine_transform(volume, matrix, offset=offset, order=1, mode="nearest")


def mr_intensity(volume: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """``volume`` (normalised MR) as another acquisition would give it before normalisation: its
    values above the background (its minimum) times a smooth multiplicative bias field (the log
    of a few random control points per axis, interpolated cubically) and a global gain."""
    nodes = rng.standard_normal((BIAS_NODES,) * 3) * MAX_BIAS * strength
    zoom = [n / BIAS_NODES for n in volume.shape]
    field = np.exp(ndimage.zoom(nodes, zoom, order=3, mode="nearest", grid_mode=True))
    gain = math.exp(rng.uniform(-1, 1) * math.log(MAX_GAIN) * min(strength, 1.0))
    background = float(volume.min())
    return ((volume - background) * field * gain).astype(np.float32)
