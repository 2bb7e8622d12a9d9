"""Bring a scan onto a model's input grid and intensity range, and bring results back.

The model grid is a box of ``shape`` voxels whose axes run along the *source volume's own index
axes* (so model slices are parallel to source slices), centred on the scan (or on a region of it).
Its voxel size is either fixed in mm (the field of view is then ``shape * spacing``, cropped or
padded around the centre) or, with ``spacing_mm=None``, stretched so the scan or region fills it.
Because the axes are shared, the map from model index to source index is a per-axis scale plus
offset; :class:`ModelGrid` holds it exactly, and ``grid.affine`` places model voxels in world mm,
so a model-grid map can be shown in napari as it is or resampled onto the source grid.

Each model axis runs *along* its world axis (inferior, posterior, left; see volume.py): where a
source axis runs against it, the scale is negative and the model grid reads that axis backwards.
So the network sees a scan the same way up whatever order its file stores it in: a DICOM series
is read inferior slice first, a phantom made in memory superior slice first, and a model trained
on one and shown the other sees the body upside down (the shipped demo model, trained on phantoms
in memory, fell from accuracy 0.80 to 0.53 on the same held-out phantoms in reader order).

Resampling is separable linear interpolation (one axis at a time, with ``numpy.take``) after a
block average by the integer part of the downsampling factor, which removes aliasing. Measured on
2 shared cores, a 512x512x300 int16 CT goes to 128^3 in 0.25-0.35 s (``prepare``, windowing
included), about what an aliased ``scipy.ndimage.affine_transform`` of order 1 takes
(0.13-0.27 s); a 128^3 map goes back to the 512x512x300 grid in 0.6-1.8 s, against 5-9 s with
``affine_transform``.

Voxels outside the scan are air for CT (-1024 HU) and the scan minimum for MR. NaN or infinite
voxels are refused, never patched: a scan with holes is reported, not silently classified.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from napari_scan_classifier.errors import InvalidInputError
from napari_scan_classifier.volume import Volume, spacing_of

CT_AIR_HU = -1024.0
INTENSITY_KINDS = ("ct_window", "zscore", "percentile")
INTENSITY_MASKS = ("foreground", "head")
ZSCORE_CLIP = 5.0
LEFT_RIGHT_AXIS = 2  # model grids run along world I, P, L (see above): axis 2 is left-right

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Box:
    """A region of a scan between two opposite corners.

    ``space="index"``: ``lo``/``hi`` are (z, y, x) voxel indices, half-open like a NumPy slice.
    ``space="world"``: ``lo``/``hi`` are world (I, P, L) mm; the region is the index-space box
    that encloses the world box (they coincide unless the scan is oblique).
    """

    lo: Sequence[float]
    hi: Sequence[float]
    space: Literal["index", "world"] = "index"

    def edges(self, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        """Continuous index coordinates of the region's low and high faces (voxel centres are
        integers, so voxel ``i`` spans ``i - 0.5`` to ``i + 0.5``)."""
        lo, hi = np.asarray(self.lo, dtype=float), np.asarray(self.hi, dtype=float)
        if lo.shape != (3,) or hi.shape != (3,):
            raise ValueError("a box needs two (z, y, x) corners")
        if self.space == "index":
            return np.minimum(lo, hi) - 0.5, np.maximum(lo, hi) - 0.5
        if self.space != "world":
            raise ValueError(f"box space must be 'index' or 'world', not {self.space!r}")
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
        indices = volume.world_to_index(corners)
        return indices.min(axis=0), indices.max(axis=0)


@dataclass(frozen=True, eq=False)
class ModelGrid:
    """The model's input grid placed in a source volume.

    ``source_from_model`` (4x4, diagonal plus offset) maps homogeneous model indices to source
    indices, counted with the source's axes in ``order`` (world order); ``affine`` maps them to
    world mm (``volume.world_aligned().affine @ source_from_model``).
    """

    shape: tuple[int, int, int]
    source_from_model: np.ndarray
    affine: np.ndarray
    source_shape: tuple[int, int, int]
    # the source's data axes in world order (Volume.world_order): the grid is placed in the
    # source read with its axes so permuted (the indices above count in that order), so that a
    # coronal or sagittal series reaches the model as an axial one does
    order: tuple[int, int, int] = (0, 1, 2)

    def in_order(self, voxels: np.ndarray) -> np.ndarray:
        """Source voxels (its own axis order) with their axes in this grid's order (a view)."""
        return np.transpose(voxels, self.order) if self.order != (0, 1, 2) else voxels

    def to_source_order(self, values: np.ndarray) -> np.ndarray:
        """Values in this grid's axis order back in the source's own axis order (a view)."""
        if self.order == (0, 1, 2):
            return values
        return np.transpose(values, tuple(int(a) for a in np.argsort(self.order)))

    @property
    def scale(self) -> np.ndarray:
        """Source voxels per model voxel, per axis."""
        return np.diag(self.source_from_model)[:3].copy()

    @property
    def offset(self) -> np.ndarray:
        """Source index of model voxel (0, 0, 0)."""
        return self.source_from_model[:3, 3].copy()

    @property
    def spacing(self) -> Triple:
        """Model voxel size (z, y, x) in mm."""
        return spacing_of(self.affine)

    def model_to_source(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) model indices to fractional source indices."""
        return np.atleast_2d(np.asarray(indices, dtype=float)) * self.scale + self.offset

    def source_to_model(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) source indices to fractional model indices."""
        return (np.atleast_2d(np.asarray(indices, dtype=float)) - self.offset) / self.scale

    def model_to_world(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) model indices to world mm."""
        pts = np.atleast_2d(np.asarray(indices, dtype=float))
        return pts @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_model(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world mm to fractional model indices."""
        inverse = np.linalg.inv(self.affine)
        pts = np.atleast_2d(np.asarray(points, dtype=float))
        return pts @ inverse[:3, :3].T + inverse[:3, 3]


def model_grid(
    volume: Volume,
    shape: Sequence[int],
    spacing_mm: Sequence[float] | None = None,
    box: Box | None = None,
) -> ModelGrid:
    """The model grid of ``shape`` centred on ``volume`` (or on ``box``), see the module doc."""
    shape3 = _positive_triple(shape, "input shape", int)
    order = volume.world_order()
    if box is None:
        lo = np.full(3, -0.5)
        hi = np.asarray(volume.shape, dtype=float) - 0.5
    else:
        lo, hi = box.edges(volume)
        _check_box(lo, hi, volume.shape)
    aligned = volume.world_aligned()
    lo, hi = lo[list(order)], hi[list(order)]
    n = np.asarray(shape3, dtype=float)
    if spacing_mm is None:
        scale = (hi - lo) / n
    else:
        scale = np.asarray(_positive_triple(spacing_mm, "spacing", float)) / aligned.spacing
    centre = (lo + hi) / 2
    scale = scale * along_world(aligned.affine)
    source_from_model = np.diag([*scale, 1.0])
    source_from_model[:3, 3] = centre - scale * (n - 1) / 2
    affine = aligned.affine @ source_from_model
    return ModelGrid(shape3, source_from_model, affine, aligned.shape, order)


def along_world(affine: np.ndarray) -> np.ndarray:
    """+1 for each index axis that runs along the world axis it is closest to, -1 against it."""
    columns = np.asarray(affine, dtype=float)[:3, :3]
    nearest = np.argmax(np.abs(columns), axis=0)
    return np.where(columns[nearest, np.arange(3)] < 0, -1.0, 1.0)


def check_scan(voxels: np.ndarray) -> None:
    """Refuse arrays a 3D classifier cannot use, with a reason: wrong rank, colour, 2D, empty."""
    if voxels.size == 0:
        raise InvalidInputError(f"the scan is empty (shape {voxels.shape})")
    if voxels.ndim == 4 and voxels.shape[-1] in (3, 4):
        raise InvalidInputError(
            f"the scan has shape {voxels.shape}: it looks like colour (RGB) images, "
            "not a greyscale CT or MR volume"
        )
    if voxels.ndim == 3 and voxels.shape[-1] in (3, 4) and voxels.dtype == np.uint8:
        raise InvalidInputError(f"the data (shape {voxels.shape}, 8-bit) look like one RGB image")
    if voxels.ndim == 4:
        raise InvalidInputError(
            f"the model needs one 3D volume (slice, row, column); got {len(voxels)} volumes "
            f"(time points, echoes or channels) of shape {voxels.shape[1:]}: pick one, 0 to "
            f"{len(voxels) - 1} (classify --frame N, or napari's slider)"
        )
    if voxels.ndim != 3:
        raise InvalidInputError(
            f"the model needs one 3D volume (slice, row, column); got {voxels.ndim}D data of "
            f"shape {voxels.shape}"
        )
    if min(voxels.shape) < 2:
        raise InvalidInputError(f"the scan (shape {voxels.shape}) is a single 2D image, not 3D")
    if not (np.issubdtype(voxels.dtype, np.integer) or np.issubdtype(voxels.dtype, np.floating)):
        raise InvalidInputError(f"voxel type {voxels.dtype} is not a greyscale intensity")


def validate_intensity(spec: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``spec`` is a usable intensity recipe (see :func:`normalise`)."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind not in INTENSITY_KINDS:
        raise ValueError(f"intensity kind must be one of {INTENSITY_KINDS}, got {kind!r}")
    if kind == "ct_window":
        center, width = spec.get("center"), spec.get("width")
        if not _is_number(center) or not _is_number(width) or width <= 0:
            raise ValueError("a CT window needs a numeric 'center' and a positive 'width' (HU)")
    if kind == "percentile":
        low, high = spec.get("low", 1.0), spec.get("high", 99.0)
        if not (_is_number(low) and _is_number(high) and 0 <= low < high <= 100):
            raise ValueError("percentile scaling needs 0 <= 'low' < 'high' <= 100")
    if kind != "ct_window" and spec.get("mask", "foreground") not in INTENSITY_MASKS:
        raise ValueError(f"the statistics' mask must be one of {INTENSITY_MASKS}")


def normalise(
    values: np.ndarray, spec: Mapping[str, Any], inside: np.ndarray | None = None
) -> np.ndarray:
    """Map intensities to what the model was trained on, as float32.

    - ``{"kind": "ct_window", "center": c, "width": w}``: HU ``c - w/2 .. c + w/2`` to 0..1,
      clipped.
    - ``{"kind": "zscore"}``: zero mean, unit SD over the foreground (voxels above the robust
      threshold ``p2 + 0.1 (p98 - p2)``, as FSL BET uses), clipped to +-5 SD.
    - ``{"kind": "percentile", "low": 1, "high": 99}``: those percentiles to 0..1, clipped.

    Statistics use only ``inside`` voxels (those that lie in the scan, not the padding); with
    ``"mask": "head"`` only those within the head (:func:`head_mask`: the foreground with its
    dark inner parts, skull and CSF, filled in), so the recipe neither depends on how much
    background the field of view holds nor on how dark the skull is in this contrast. Every
    recipe but the CT window is unchanged when the scan's intensities are scaled and offset
    (MR has no absolute unit).
    """
    validate_intensity(spec)
    values = values.astype(np.float32, copy=False)
    if spec["kind"] == "ct_window":
        low = spec["center"] - spec["width"] / 2
        return np.clip((values - np.float32(low)) / np.float32(spec["width"]), 0.0, 1.0)
    if spec.get("mask") == "head":
        inside = head_mask(values, inside)
    sample = values[inside] if inside is not None else values.ravel()
    if spec["kind"] == "percentile":
        low, high = np.percentile(sample, [spec.get("low", 1.0), spec.get("high", 99.0)])
        if high <= low:
            raise InvalidInputError("the scan has no intensity contrast to scale (constant)")
        return np.clip((values - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
    foreground = sample
    if spec.get("mask") != "head":
        p2, p98 = np.percentile(sample, [2.0, 98.0])
        foreground = sample[sample > p2 + 0.1 * (p98 - p2)]
    sd = float(foreground.std()) if foreground.size else 0.0
    if sd == 0.0:
        raise InvalidInputError("the scan has no intensity contrast to normalise (constant)")
    scaled = (values - np.float32(foreground.mean())) / np.float32(sd)
    return np.clip(scaled, -ZSCORE_CLIP, ZSCORE_CLIP)


def head_mask(values: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the head in a (D, H, W) MR: voxels above ``p2 + 0.1 (p98 - p2)`` of the
    ``inside`` voxels, with holes filled slice by slice (skull and CSF are dark in some
    contrasts). Falls back to ``inside`` when nothing passes."""
    inside = np.ones(values.shape, bool) if inside is None else inside
    p2, p98 = np.percentile(values[inside], [2.0, 98.0])
    bright = (values > p2 + 0.1 * (p98 - p2)) & inside
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    filled = ndimage.binary_fill_holes(bright, structure=in_plane) & inside
    return filled if filled.any() else inside


def resample_to_grid(voxels: np.ndarray, grid: ModelGrid, cval: float) -> np.ndarray:
    """Source voxels on the model grid (float32); ``cval`` where the grid leaves the scan."""
    voxels = grid.in_order(voxels)
    backwards = tuple(int(a) for a in np.flatnonzero(grid.scale < 0))
    if backwards:  # read those axes mirrored, with a positive scale
        voxels = np.flip(voxels, axis=backwards)
        grid = _mirrored(grid, backwards)
    positions = [grid.scale[a] * np.arange(grid.shape[a]) + grid.offset[a] for a in range(3)]
    insides = [_within(p, n) for p, n in zip(positions, voxels.shape, strict=True)]
    if not all(inside.any() for inside in insides):
        return np.full(grid.shape, cval, dtype=np.float32)
    factors = [max(1, int(np.floor(s + 1e-6))) for s in grid.scale]
    starts, crop = _crop_for(voxels, positions, insides, factors)
    blocks = _block_mean(crop, factors)
    out = blocks
    for axis in np.argsort([b / n for b, n in zip(blocks.shape, grid.shape, strict=True)])[::-1]:
        f = factors[axis]
        at = (positions[axis] - starts[axis] - (f - 1) / 2) / f
        out = _interp_axis(out, int(axis), at, insides[axis], cval)
    return out


def prepare(
    volume: Volume,
    shape: Sequence[int],
    spacing_mm: Sequence[float] | None,
    intensity: Mapping[str, Any],
    box: Box | None = None,
) -> tuple[np.ndarray, ModelGrid]:
    """The (D, H, W) float32 model input for ``volume`` (or a region of it) and its grid."""
    check_scan(volume.voxels)
    low, high = np.min(volume.voxels), np.max(volume.voxels)
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(volume.voxels)))
        raise InvalidInputError(f"the scan has {bad} voxels without a value (NaN or infinite)")
    if low == high:
        raise InvalidInputError(f"every voxel of the scan has the same value ({low})")
    grid = model_grid(volume, shape, spacing_mm, box)
    cval = CT_AIR_HU if intensity.get("kind") == "ct_window" else float(low)
    resampled = resample_to_grid(volume.voxels, grid, cval)
    return normalise(resampled, intensity, inside_mask(grid)), grid


def _mirrored(grid: ModelGrid, axes: tuple[int, ...]) -> ModelGrid:
    """The same grid placed in the source flipped along ``axes`` (index i -> n - 1 - i)."""
    flip = np.eye(4)
    for axis in axes:
        flip[axis, axis] = -1.0
        flip[axis, 3] = grid.source_shape[axis] - 1
    return replace(grid, source_from_model=flip @ grid.source_from_model)


def mirror_left_right(batch: np.ndarray) -> np.ndarray:
    """A batch (B, D, H, W, ...) of model-grid arrays, each mirrored left-right: the one flip
    anatomy allows (the body is roughly left-right symmetric, never top-bottom or front-back)."""
    return np.flip(batch, axis=1 + LEFT_RIGHT_AXIS)


def mirror_views(batch: np.ndarray, mirror: bool) -> list[np.ndarray]:
    """The views a bundle answers from (see inference.py): the batch, and its mirror image
    when ``mirror``; the answer is the mean of their outputs."""
    return [batch, mirror_left_right(batch)] if mirror else [batch]


def inside_mask(grid: ModelGrid) -> np.ndarray:
    """Boolean (D, H, W): which model voxels lie inside the source scan."""
    z, y, x = (
        _within(grid.scale[a] * np.arange(grid.shape[a]) + grid.offset[a], grid.source_shape[a])
        for a in range(3)
    )
    return z[:, None, None] & y[None, :, None] & x[None, None, :]


def to_source_grid(
    values: np.ndarray, grid: ModelGrid, volume: Volume, cval: float = 0.0
) -> np.ndarray:
    """A model-grid map (e.g. Grad-CAM) resampled onto ``volume``'s grid (float32, its shape),
    so it shares the source affine; ``cval`` outside the model's field of view."""
    if values.shape != grid.shape:
        raise ValueError(f"map of shape {values.shape} is not on the model grid {grid.shape}")
    out = values
    shape = grid.source_shape
    for axis in np.argsort(np.asarray(shape) / np.asarray(grid.shape)):
        at = (np.arange(shape[axis]) - grid.offset[axis]) / grid.scale[axis]
        out = _interp_axis(out, int(axis), at, _within(at, grid.shape[axis]), cval)
    return np.ascontiguousarray(grid.to_source_order(out))


@dataclass(frozen=True)
class SliceMap:
    """For each source slice, the two nearest model slices and the weight of the upper one."""

    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray
    inside: np.ndarray

    def apply(self, per_slice: np.ndarray) -> np.ndarray:
        """Model per-slice values (D, ...) to source slices (Z, ...); NaN outside the grid."""
        per_slice = np.asarray(per_slice, dtype=float)
        w = self.weight.reshape((-1,) + (1,) * (per_slice.ndim - 1))
        out = (1 - w) * per_slice[self.lower] + w * per_slice[self.upper]
        out[~self.inside] = np.nan
        return out


def slice_index_map(grid: ModelGrid) -> SliceMap:
    """Linear interpolation weights from model slices to every source slice (axis 0)."""
    at = (np.arange(grid.source_shape[0]) - grid.offset[0]) / grid.scale[0]
    lower, upper, weight = _neighbours(at, grid.shape[0])
    return SliceMap(lower, upper, weight, _within(at, grid.shape[0]))


def _within(positions: np.ndarray, n: int) -> np.ndarray:
    """Positions that fall inside an axis of ``n`` voxels (each spans +-0.5 around its index)."""
    tolerance = 1e-6
    return (positions >= -0.5 - tolerance) & (positions <= n - 0.5 + tolerance)


def _neighbours(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices either side of each position and the weight of the upper one (edges clamp)."""
    clamped = np.clip(positions, 0, n - 1)
    lower = np.minimum(np.floor(clamped).astype(np.intp), max(n - 2, 0))
    upper = np.minimum(lower + 1, n - 1)
    return lower, upper, (clamped - lower).astype(np.float32)


def _interp_axis(
    a: np.ndarray, axis: int, positions: np.ndarray, inside: np.ndarray, cval: float
) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at fractional ``positions`` (float32)."""
    lower, upper, weight = _neighbours(positions, a.shape[axis])
    shape = [1] * a.ndim
    shape[axis] = -1
    out = np.take(a, upper, axis=axis).astype(np.float32, copy=False)
    below = np.take(a, lower, axis=axis)
    out -= below
    out *= weight.reshape(shape)
    out += below
    outside = [slice(None)] * a.ndim
    outside[axis] = ~inside
    out[tuple(outside)] = cval
    return out


def _crop_for(
    voxels: np.ndarray,
    positions: list[np.ndarray],
    insides: list[np.ndarray],
    factors: list[int],
) -> tuple[list[int], np.ndarray]:
    """The part of the scan the grid samples (plus a block of margin), and where it starts."""
    starts, stops = [], []
    for p, inside, f, n in zip(positions, insides, factors, voxels.shape, strict=True):
        used = p[inside]
        starts.append(max(0, int(np.floor(used.min())) - f))
        stops.append(min(n, int(np.ceil(used.max())) + f + 1))
    crop = voxels[tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))]
    return starts, crop


def _block_mean(a: np.ndarray, factors: list[int]) -> np.ndarray:
    """Average ``factors``-sized blocks (edge-padding a ragged end) so downsampling cannot alias."""
    if all(f == 1 for f in factors):
        return a
    pad = [(0, -n % f) for n, f in zip(a.shape, factors, strict=True)]
    if any(after for _, after in pad):
        a = np.pad(a, pad, mode="edge")
    for axis in (2, 1, 0):
        f = factors[axis]
        if f == 1:
            continue
        index = [slice(None)] * 3
        index[axis] = slice(0, None, f)
        total = a[tuple(index)].astype(np.float32)
        for k in range(1, f):
            index[axis] = slice(k, None, f)
            total += a[tuple(index)]
        a = total
    a *= np.float32(1.0 / np.prod(factors))
    return a


def _check_box(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int, int]) -> None:
    if np.any(hi - lo <= 0):
        raise InvalidInputError("the region is empty: its corners must differ along every axis")
    if np.any(hi <= -0.5) or np.any(lo >= np.asarray(shape) - 0.5):
        raise InvalidInputError("the region lies outside the scan")


def _positive_triple(values: Sequence[float], what: str, kind: type) -> tuple[Any, Any, Any]:
    triple = tuple(values)
    if len(triple) != 3 or not all(_is_number(v) and v > 0 for v in triple):
        raise ValueError(f"{what} must be three positive numbers (z, y, x), got {values!r}")
    return tuple(kind(v) for v in triple)  # type: ignore[return-value]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
