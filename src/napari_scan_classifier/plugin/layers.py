"""Volumes <-> napari layer data.

A layer gets the Volume's affine, so napari's world coordinates are the package's world millimetres
(see ``volume.py``) and every layer made from the same scan lines up. napari slices a layer along
its *data* axes, so those must run (up to a flip) along the world axes of the same position: a
sagittal or coronal acquisition is shown through a transposed view of its voxels (no copy, no
resampling) with the affine's columns permuted to match. The layer's metadata holds the
de-identified header fields, flat, plus the Volume itself, as acquired (``VOLUME_KEY``), so later
widgets get the scan back without re-reading it. Result layers (a saliency map) are laid out the
same way and name their scan layer in their metadata (``SOURCE_KEY``): a new result updates them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from napari.components import LayerList
from napari.layers import Image, Layer
from napari.types import FullLayerData
from napari.utils.transforms import Affine

from napari_scan_classifier.errors import InvalidInputError
from napari_scan_classifier.volume import SAFE_METADATA_KEYS, WORLD_AXES, Volume

VOLUME_KEY = "volume"
SLICE_AXIS_LABEL = "slice (S→I)"
# A result layer (a saliency map) names the layer it was computed from by its unique_id, so a new
# classification finds and updates it whatever the user has renamed either layer to.
SOURCE_KEY = "scan_classifier_source"
RESULT_KIND_KEY = "scan_classifier_result"
SALIENCY_OPACITY = 0.6
# Stale once the layer's geometry changes; Volume recomputes it from the affine.
_DERIVED_KEYS = frozenset({"spacing"})
# Enough voxels for stable percentiles without scanning a whole 500 MB volume.
_PERCENTILE_SAMPLE = 1_000_000
_LABELS_MODALITY = "SEG"
# A mask is on the scan's grid when index maps agree to a thousandth of a voxel.
_GRID_ATOL = 1e-3


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


def map_to_layer_data(
    volume: Volume, values: np.ndarray, name: str, metadata: dict[str, Any], upper: float = 1.0
) -> FullLayerData:
    """An image LayerDataTuple laying ``values`` (a 0-1 map on ``volume``'s grid) over the layer
    :func:`volume_to_layer_data` makes of ``volume``: the same world alignment and affine; the
    colour scale tops out at ``upper``."""
    aligned = volume.with_voxels(values).world_aligned()
    kwargs: dict[str, Any] = {
        "name": name,
        "affine": _layer_affine(aligned.affine, values.ndim),
        "axis_labels": _axis_labels(values.ndim),
        "units": _units(values.ndim),
        "metadata": metadata,
        "colormap": "inferno",
        "blending": "additive",
        "opacity": SALIENCY_OPACITY,
        "contrast_limits": (0.0, upper),
    }
    return (aligned.voxels, kwargs, "image")


def scan_volume(layer: Layer) -> Volume:
    """The scan an image layer shows, to classify: the Volume as acquired where the plugin's
    reader made the layer (the command line gets the same input), else the layer's voxels on its
    world geometry. InvalidInputError for layers that cannot be a 3D scan."""
    if not isinstance(layer, Image):
        kind = type(layer).__name__.lower()
        raise InvalidInputError(f"'{layer.name}' is a {kind} layer, not a scan")
    volume = layer.metadata.get(VOLUME_KEY)
    if isinstance(volume, Volume):
        return volume
    if layer.rgb:
        raise InvalidInputError(f"'{layer.name}' is a colour (RGB) image, not a greyscale scan")
    if layer.ndim not in (3, 4):
        raise InvalidInputError(
            f"'{layer.name}' is {layer.ndim}D; classification needs a 3D scan (slice, row, column)"
        )
    return layer_to_volume(layer)


def shown_frame(volume: Volume, layer: Layer, point: Sequence[float]) -> Volume:
    """The volume a 4D scan shows at the viewer's ``point`` (its first slider: time point, echo
    or b-value): the one the user sees is the one classified. A 3D scan as it is."""
    if volume.voxels.ndim == 3:
        return volume
    position = layer.world_to_data(np.asarray(point, dtype=float)[-layer.ndim :])
    return volume.frame(int(np.clip(np.round(position[0]), 0, volume.frames - 1)))


def is_result_layer(layer: Layer) -> bool:
    """Whether ``layer`` was made by the plugin from another layer (not a scan of its own)."""
    return SOURCE_KEY in layer.metadata


def is_scan_layer(layer: Layer) -> bool:
    """Whether ``layer`` shows a scan's intensities: a greyscale image not made by the plugin."""
    return isinstance(layer, Image) and not layer.rgb and not is_result_layer(layer)


def scan_of(layer: Layer, layers: Iterable[Layer]) -> Image | None:
    """The scan ``layer`` belongs to: itself when it is a scan; the scan a result layer was made
    from; else the scan whose data grid (shape and affine) a mask or map shares. None if none."""
    if is_scan_layer(layer):
        return layer  # type: ignore[return-value]
    scans = [other for other in layers if is_scan_layer(other)]
    source = layer.metadata.get(SOURCE_KEY)
    for scan in scans:
        if source is not None and scan.unique_id == source:
            return scan
    for scan in scans:
        same_grid = tuple(scan.data.shape) == tuple(layer.data.shape)
        if same_grid and np.allclose(scan.affine.affine_matrix, layer.affine.affine_matrix):
            return scan
    return None


def find_result_layer(layers: Iterable[Layer], source: Layer, kind: str) -> Layer | None:
    """The ``kind`` result layer made from ``source``, if there is one."""
    for layer in layers:
        meta = layer.metadata
        if meta.get(SOURCE_KEY) == source.unique_id and meta.get(RESULT_KIND_KEY) == kind:
            return layer
    return None


def put_result_layer(
    layers: LayerList, source: Layer, kind: str, layer_data: FullLayerData
) -> Layer:
    """Add ``layer_data`` as ``source``'s ``kind`` result layer, or update the one already there
    (its data, geometry, name and metadata; the user's display settings stay)."""
    data, kwargs, layer_type = layer_data
    metadata = {**kwargs["metadata"], SOURCE_KEY: source.unique_id, RESULT_KIND_KEY: kind}
    layer = find_result_layer(layers, source, kind)
    if layer is None:
        layer = Layer.create(data, {**kwargs, "metadata": metadata}, layer_type)
        layers.append(layer)
        return layer
    layer.data = data
    layer.affine = kwargs["affine"]
    layer.name = kwargs["name"]
    layer.metadata = metadata
    return layer


def remove_result_layer(layers: LayerList, source: Layer, kind: str) -> None:
    """Remove ``source``'s ``kind`` result layer (a stale map from an earlier classification)."""
    layer = find_result_layer(layers, source, kind)
    if layer is not None:
        layers.remove(layer)


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


def empty_mask_layer_data(scan: Layer, name: str) -> FullLayerData:
    """An empty labels LayerDataTuple on ``scan``'s data grid (same shape, same affine), to paint
    a lesion on; :func:`mask_on_acquired_grid` maps the painting back to the scan as acquired."""
    grid = layer_to_volume(scan)
    return _labels_layer_data(np.zeros(grid.shape, dtype=np.uint8), grid.affine, name)


def mask_to_layer_data(volume: Volume, mask: np.ndarray, name: str) -> FullLayerData:
    """A labels LayerDataTuple for ``mask`` (on ``volume``'s acquired grid) laid out like the
    image layer :func:`volume_to_layer_data` makes of ``volume``."""
    aligned = volume.with_voxels(mask).world_aligned()
    return _labels_layer_data(aligned.voxels, aligned.affine, name)


def mask_on_acquired_grid(mask_layer: Layer, volume: Volume) -> np.ndarray:
    """The voxels of ``mask_layer`` on ``volume``'s grid as acquired (a transposed view).

    A scan layer shows a world-aligned view of the acquired voxels (a sagittal scan is
    transposed), so a mask painted on the layer's grid must be transposed back before it is
    saved with the scan. InvalidInputError when the mask lies on another grid (shape, spacing,
    position or orientation), which only resampling could fix.
    """
    painted = layer_to_volume(mask_layer)
    # acquired index -> painted index; the same voxels in another axis order give a permutation
    mapping = np.linalg.inv(painted.affine) @ volume.affine
    axes = np.argmax(np.abs(mapping[:3, :3]), axis=0)
    expected = np.zeros((4, 4))
    expected[axes, [0, 1, 2]] = 1.0
    expected[3, 3] = 1.0
    same_voxels = painted.voxels.ndim == 3 and np.allclose(mapping, expected, atol=_GRID_ATOL)
    if not same_voxels or tuple(painted.shape[a] for a in axes) != volume.shape:
        raise InvalidInputError(
            f"The mask '{mask_layer.name}' is on another grid than the scan (its shape, spacing, "
            "position or orientation differs). Paint the lesion in a mask made for this scan."
        )
    return painted.voxels.transpose(*axes)


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


def _labels_layer_data(voxels: np.ndarray, affine: np.ndarray, name: str) -> FullLayerData:
    kwargs: dict[str, Any] = {
        "name": name,
        "affine": _layer_affine(affine, 3),
        "axis_labels": _axis_labels(3),
        "units": _units(3),
        "metadata": {},
    }
    return (voxels, kwargs, "labels")


def _axis_labels(ndim: int) -> tuple[str, ...]:
    """The slider walks world axis 0 (inferior, mm): its left end is the top of the scan."""
    return ("t",) * (ndim - 3) + (SLICE_AXIS_LABEL, *WORLD_AXES[1:])


def _units(ndim: int) -> tuple[str, ...]:
    return ("pixel",) * (ndim - 3) + ("mm",) * 3
