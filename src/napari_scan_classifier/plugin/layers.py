"""Volumes <-> napari layer data.

A layer gets the Volume's affine, so napari's world coordinates are the package's world millimetres
(see ``volume.py``) and every layer made from the same scan lines up. napari slices a layer along
its *data* axes, so those must run (up to a flip) along the world axes of the same position: a
sagittal or coronal acquisition is shown through a transposed view of its voxels (no copy, no
resampling) with the affine's columns permuted to match. The layer's metadata holds the
de-identified header fields, flat, plus the Volume itself, as acquired (``VOLUME_KEY``), so later
widgets get the scan back without re-reading it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from napari.layers import Layer
from napari.types import FullLayerData
from napari.utils.transforms import Affine

from napari_scan_classifier.errors import InvalidInputError
from napari_scan_classifier.volume import SAFE_METADATA_KEYS, WORLD_AXES, Volume

VOLUME_KEY = "volume"
# Stale once the layer's geometry changes; Volume recomputes it from the affine.
_DERIVED_KEYS = frozenset({"spacing"})
# Enough voxels for stable percentiles without scanning a whole 500 MB volume.
_PERCENTILE_SAMPLE = 1_000_000
_LABELS_MODALITY = "SEG"


class Window(NamedTuple):
    """A display window in the radiology convention: width and level (centre), in HU for CT."""

    width: float
    level: float

    @property
    def limits(self) -> tuple[float, float]:
        return (self.level - self.width / 2, self.level + self.width / 2)


CT_WINDOWS: dict[str, Window] = {
    "brain": Window(80, 40),
    "soft tissue": Window(400, 40),
    "lung": Window(1500, -600),
    "bone": Window(1800, 400),
}
DEFAULT_CT_WINDOW = CT_WINDOWS["soft tissue"]


def volume_to_layer_data(volume: Volume) -> FullLayerData:
    """An image LayerDataTuple placing ``volume`` in world mm, named from safe fields only."""
    metadata = {**volume.metadata, VOLUME_KEY: volume}
    aligned = volume.world_aligned()
    voxels, affine = aligned.voxels, aligned.affine
    kwargs: dict[str, Any] = {
        "name": volume.display_name(),
        "affine": _layer_affine(affine, voxels.ndim),
        "axis_labels": _axis_labels(volume.voxels.ndim),
        "units": _units(volume.voxels.ndim),
        "metadata": metadata,
        "colormap": "gray",
        "contrast_limits": _initial_contrast(volume),
    }
    return (voxels, kwargs, "image")


def layer_to_volume(layer: Layer) -> Volume:
    """The Volume an image or labels layer shows: its data on its current world geometry."""
    return layer_data_to_volume(*layer.as_layer_data_tuple())


def layer_data_to_volume(data: Any, meta: dict[str, Any], layer_type: str) -> Volume:
    """:func:`layer_to_volume` for a LayerDataTuple (what npe2 hands to writers)."""
    voxels = np.asarray(data)
    if voxels.ndim not in (3, 4):
        raise InvalidInputError(
            f"Layer '{meta.get('name', '')}' is {voxels.ndim}D; only 3D or 4D scans can be saved."
        )
    affine = _spatial_affine(_world_matrix(meta), voxels.ndim)
    if layer_type == "labels":
        return Volume(voxels, affine, modality=_LABELS_MODALITY)
    source = meta.get("metadata", {})
    safe = {k: v for k, v in source.items() if k in SAFE_METADATA_KEYS - _DERIVED_KEYS}
    return Volume(voxels, affine, modality=str(safe.get("modality", "OT")), metadata=safe)


def dicom_window(metadata: dict[str, Any]) -> Window | None:
    """The first window stored in the DICOM header (the scanner's or the reader's choice)."""
    center = _first(metadata.get("window_center"))
    width = _first(metadata.get("window_width"))
    if center is None or width is None or width <= 0:
        return None
    return Window(width, center)


def _first(value: Any) -> float | None:
    """DICOM window tags may be multi-valued; the first value is the primary window."""
    if value is None:
        return None
    values = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    return float(values[0]) if values.size else None


def _initial_contrast(volume: Volume) -> tuple[float, float]:
    if volume.modality == "CT":
        return (dicom_window(volume.metadata) or DEFAULT_CT_WINDOW).limits
    return _percentile_limits(volume.voxels)


def _percentile_limits(voxels: np.ndarray) -> tuple[float, float]:
    """1st-99.5th percentile: ignores air and a few hot voxels, which min/max would not."""
    flat = voxels.ravel()
    sample = flat[:: max(1, flat.size // _PERCENTILE_SAMPLE)]
    low, high = (float(v) for v in np.nanpercentile(sample, [1, 99.5]))
    return (low, high) if high > low else (low, low + 1)


def _layer_affine(affine: np.ndarray, ndim: int) -> np.ndarray:
    """napari needs an (ndim+1) square affine: a 4D (t, z, y, x) volume keeps t as is."""
    full = np.eye(ndim + 1)
    full[ndim - 3 :, ndim - 3 :] = affine
    return full


def _spatial_affine(world: np.ndarray, ndim: int) -> np.ndarray:
    """The 4x4 (z, y, x) part of a layer's (ndim+1) affine."""
    return world[ndim - 3 :, ndim - 3 :]


def _world_matrix(meta: dict[str, Any]) -> np.ndarray:
    """Data -> world as napari composes it: ``affine`` after scale/rotate/shear/translate."""
    data_to_physical = Affine(
        scale=meta["scale"],
        translate=meta["translate"],
        rotate=meta["rotate"],
        shear=meta["shear"],
    ).affine_matrix
    return np.asarray(meta["affine"], dtype=float) @ data_to_physical


def _axis_labels(ndim: int) -> tuple[str, ...]:
    return ("t",) * (ndim - 3) + WORLD_AXES


def _units(ndim: int) -> tuple[str, ...]:
    return ("pixel",) * (ndim - 3) + ("mm",) * 3
