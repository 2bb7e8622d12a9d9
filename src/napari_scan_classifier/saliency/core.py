"""What every saliency method shares: the map type, the class to explain, and taking a model-grid
map onto the source volume's grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_scan_classifier.models import Bundle
from napari_scan_classifier.preprocess import CT_AIR_HU, Box, ModelGrid, inside_mask, normalise
from napari_scan_classifier.preprocess import to_source_grid as _axis_by_axis
from napari_scan_classifier.volume import Volume

if TYPE_CHECKING:
    from napari_scan_classifier.saliency.faithfulness import Faithfulness

MATRIX_MAP_SIZE = 16  # maps up to this many voxels per axis go to the source by matrix products
Target = str | int | None


@dataclass
class SaliencyMap:
    """A saliency map on the source volume's grid (``values`` has its shape, ``affine`` is its
    affine), for ``target_class``; ``box``: the region the model saw (None: the whole scan);
    ``layer``: the activation a layer-based method used; ``faithfulness`` when it was checked;
    ``instead_of``: the bundle's default method (``method``, ``layer``, ``gap``) whose map failed
    its check on this scan, when this map replaced it."""

    values: np.ndarray
    affine: np.ndarray
    method: str
    target_class: str
    box: Box | None = None
    faithfulness: Faithfulness | None = None
    layer: str | None = None
    instead_of: tuple[Mapping[str, Any], ...] = ()


def to_source(values: np.ndarray, grid: ModelGrid, volume: Volume) -> np.ndarray:
    """A map on ``grid`` resampled onto ``volume``'s grid, as
    :func:`~napari_scan_classifier.preprocess.to_source_grid` does (linear, 0 outside the grid).

    A Grad-CAM map has a few voxels per axis; then one interpolation matrix per axis and two
    matrix products write the big output once, where interpolating axis by axis passes over it
    several times: 0.15-0.3 s instead of 0.5-1.3 s for an 8^3 map on a 512x512x300 scan (two
    cores). Larger maps make the products slower than the axis-by-axis path, which they take.
    """
    if max(values.shape) > MATRIX_MAP_SIZE:
        return _axis_by_axis(values, grid, volume)
    shape = grid.source_shape  # the source's axes in the grid's order
    wz, wy, wx = (
        _interpolation_matrix(n, m, s, o)
        for n, m, s, o in zip(shape, grid.shape, grid.scale, grid.offset, strict=True)
    )
    partial = wy @ (values.astype(np.float32) @ wx.T)  # (map z, source y, source x)
    out = (wz @ partial.reshape(len(partial), -1)).reshape(shape)
    return np.ascontiguousarray(grid.to_source_order(out))


def _interpolation_matrix(n: int, m: int, scale: float, offset: float) -> np.ndarray:
    """(n, m) weights taking m map samples to n source positions along one axis: linear
    between neighbours, clamped at the map's edge voxels, zero beyond the map's extent."""
    at = (np.arange(n) - offset) / scale
    clamped = np.clip(at, 0, m - 1)
    lower = np.minimum(np.floor(clamped).astype(np.intp), max(m - 2, 0))
    upper = np.minimum(lower + 1, m - 1)
    weight = clamped - lower
    matrix = np.zeros((n, m), dtype=np.float32)
    rows = np.arange(n)
    np.add.at(matrix, (rows, lower), 1 - weight)
    np.add.at(matrix, (rows, upper), weight)
    matrix[(at < -0.5 - 1e-6) | (at > m - 0.5 + 1e-6)] = 0
    return matrix


def coarse_grid(grid: ModelGrid, shape: Sequence[int]) -> ModelGrid:
    """The grid of a layer that divides the model grid into ``shape`` cells (voxel k of the
    layer centred on its cell), placed in the source volume like the model grid."""
    factor = np.asarray(grid.shape, dtype=float) / np.asarray(shape, dtype=float)
    model_from_cell = np.diag([*factor, 1.0])
    model_from_cell[:3, 3] = (factor - 1) / 2
    return replace(
        grid,
        shape=tuple(int(n) for n in shape),
        source_from_model=grid.source_from_model @ model_from_cell,
        affine=grid.affine @ model_from_cell,
    )


def normalised(values: np.ndarray) -> np.ndarray:
    """Scaled in place to a maximum of 1 (all zeros stay zeros), as float32."""
    values = values.astype(np.float32, copy=False)
    peak = float(values.max())
    if peak > 0:
        values *= np.float32(1.0 / peak)
    return values


def target_index(bundle: Bundle, target: Target, logits: np.ndarray) -> int:
    """The class to explain: the given one, or for ``None`` the class the model predicts from
    these volume logits (its calibration, class bias included, and decision rule: a bias can
    make another class than the largest logit's the answer)."""
    if target is not None:
        return class_index(bundle, target)
    m = bundle.metadata
    row = np.asarray(logits, dtype=float).reshape(1, -1)
    return int(m.decide(m.probabilities(row))[0])


def class_index(bundle: Bundle, target: str | int) -> int:
    classes = bundle.metadata.classes
    if isinstance(target, str):
        if target not in classes:
            raise ValueError(f"unknown class {target!r}; the model's classes are {classes}")
        return classes.index(target)
    if not 0 <= int(target) < len(classes):
        raise ValueError(f"class index {target} is out of range for classes {classes}")
    return int(target)


def baseline_value(x: np.ndarray, grid: ModelGrid, bundle: Bundle, baseline: str) -> float:
    """A plain input value: air (-1024 HU through a CT window, else the darkest input) or the
    mean input inside the scan."""
    if baseline == "mean":
        return float(x[inside_mask(grid)].mean())
    if baseline != "air":
        raise ValueError(f"baseline must be 'air' or 'mean', got {baseline!r}")
    intensity = bundle.metadata.intensity
    if intensity["kind"] == "ct_window":
        return float(normalise(np.array([CT_AIR_HU]), intensity)[0])
    return float(x.min())
