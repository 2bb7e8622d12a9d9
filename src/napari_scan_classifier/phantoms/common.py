"""What every phantom shares: the :class:`Phantom` record, the axis-aligned drawing grid, shapes,
smooth random fields, lesion placement and rendering to CT or MR intensities."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_scan_classifier.volume import Volume

CLASS_NAMES = ("normal", "lesion")
LESION = "lesion"  # the last tissue name of every phantom
LESION_ID0 = 200  # painting ids 200 + i give each lesion its own intensity until rendering
_MAX_LESIONS = 50
_HYPODENSE_CHANCE = 0.65
_PLACEMENT_TRIES = 12
_PARTIAL_VOLUME_MM = 0.8  # Gaussian blur standing in for the scanner's point spread


@dataclass
class Phantom:
    """A synthetic scan with its ground truth: the tissue of every voxel and the lesion voxels.

    ``volume.metadata`` also carries ``phantom_label`` and ``phantom_lesions``: one dict per
    lesion with its ``site`` (tissue), ``contrast`` (vs that tissue, HU or MR units),
    ``centre_mm`` (world I, P, L), ``radii_mm`` and ``voxels``; plain JSON, safe to store.
    """

    volume: Volume
    lesion_mask: np.ndarray  # uint8 on the volume's grid: 1 lesion, 0 elsewhere
    label: int  # index into ``classes``: for CLASS_NAMES, 1 when any lesion voxel exists
    tissues: np.ndarray  # uint8 tissue id per voxel, ids index tissue_names
    tissue_names: tuple[str, ...]
    classes: tuple[str, ...] = CLASS_NAMES  # class names ``label`` indexes

    @property
    def class_name(self) -> str:
        return self.classes[self.label]

    def tissue_mask(self, name: str) -> np.ndarray:
        """Boolean mask of one tissue (a name from ``tissue_names``)."""
        return self.tissues == self.tissue_names.index(name)


@dataclass(frozen=True)
class Grid:
    """World coordinates along each axis of an axis-aligned grid, plus the anatomy's pose."""

    axes: tuple[np.ndarray, np.ndarray, np.ndarray]  # world I, P, L of each z, y, x index
    spacing: tuple[float, float, float]  # mm along z, y, x
    centre: tuple[float, float, float]  # world (I, P, L) of the body/head centre
    angle: float  # in-plane rotation of the patient about the I axis, radians

    @classmethod
    def from_affine(
        cls, affine: np.ndarray, shape: Sequence[int], centre: Sequence[float], angle: float
    ) -> Grid:
        linear = affine[:3, :3]
        if np.count_nonzero(linear - np.diag(np.diag(linear))):
            raise ValueError("phantoms are drawn on axis-aligned grids only")
        axes = tuple(
            (affine[k, k] * np.arange(n) + affine[k, 3]).astype(np.float32)
            for k, n in enumerate(shape)
        )
        spacing = tuple(float(abs(affine[k, k])) for k in range(3))
        return cls(axes, spacing, tuple(float(c) for c in centre), float(angle))  # type: ignore[arg-type]

    @property
    def fov(self) -> tuple[float, float, float]:
        """Extent (mm) covered along I, P, L."""
        return tuple(a.size * d for a, d in zip(self.axes, self.spacing, strict=True))  # type: ignore[return-value]

    def plane(self) -> tuple[np.ndarray, np.ndarray]:
        """Body-frame (posterior, left) mm of every in-plane position, each (ny, nx)."""
        _, v, u = self.local((slice(0, 1), slice(None), slice(None)), self.centre, self.angle)
        return v[0], u[0]

    def to_world(self, w: float, v: float, u: float) -> tuple[float, float, float]:
        """World (I, P, L) of a body-frame point (inferior, posterior, left mm from the centre)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        i0, p0, l0 = self.centre
        return (i0 + w, p0 + v * c - u * s, l0 + v * s + u * c)

    def box(self, centre: Sequence[float], reach: Sequence[float]) -> tuple[slice, ...]:
        """Index ranges of the voxels within ``reach`` mm of ``centre`` along each world axis."""
        ranges = []
        for coords, c, r in zip(self.axes, centre, reach, strict=True):
            hit = np.flatnonzero(np.abs(coords - c) <= r)
            ranges.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0))
        return tuple(ranges)

    def local(
        self, box: tuple[slice, ...], centre: Sequence[float], angle: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (w, v, u) offsets of the voxels in ``box`` in a frame at ``centre``
        rotated in-plane by ``angle``: shapes (nz, 1, 1), (1, ny, nx), (1, ny, nx)."""
        w = self.axes[0][box[0]][:, None, None] - np.float32(centre[0])
        p = self.axes[1][box[1]][None, :, None] - np.float32(centre[1])
        l = self.axes[2][box[2]][None, None, :] - np.float32(centre[2])  # noqa: E741
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        return w, p * c + l * s, l * c - p * s


def streams(seed: int, count: int = 3) -> tuple[np.random.Generator, ...]:
    """Independent anatomy, lesion and noise generators (and more with ``count``: the first three
    are the same whatever ``count``), so lesions never perturb the anatomy."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count))


def vary(rng: np.random.Generator, value: float, relative: float) -> float:
    return value * rng.uniform(1.0 - relative, 1.0 + relative)


def ellipsoid(
    grid: Grid,
    box: tuple[slice, ...],
    centre: Sequence[float],
    radii: Sequence[float],
    angle: float,
) -> np.ndarray:
    w, v, u = grid.local(box, centre, angle)
    return (w / radii[0]) ** 2 + (v / radii[1]) ** 2 + (u / radii[2]) ** 2 <= 1.0


def paint_ellipsoid(
    labels: np.ndarray,
    grid: Grid,
    centre: Sequence[float],
    radii: Sequence[float],
    tissue: int,
    *,
    angle: float = 0.0,
    into: Sequence[int] | None = None,
) -> None:
    """Label an ellipsoid (world centre, body-frame radii w, v, u; ``inf`` makes a cylinder),
    only over the tissues ``into`` when given."""
    reach = max(radii[1], radii[2])
    box = grid.box(centre, (radii[0], reach, reach))
    region = labels[box]
    mask = ellipsoid(grid, box, centre, radii, grid.angle + angle)
    if into is not None:
        mask = mask & np.isin(region, into)
    region[mask] = tissue


def tissue_lut(table: dict[str, tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    """Per-phantom intensity of every tissue id (lesion ids are filled in when placed)."""
    lut = np.zeros(256, dtype=np.float32)
    for tissue_id, (value, jitter) in enumerate(table.values()):
        lut[tissue_id] = value + rng.uniform(-jitter, jitter)
    return lut


def centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Diagonal affine putting the grid's centre at (0, 0, 0) mm."""
    affine = np.eye(4)
    for k, (n, d) in enumerate(zip(shape, spacing, strict=True)):
        affine[k, k] = d
        affine[k, 3] = -d * (n - 1) / 2.0
    return affine


# ---------------------------------------------------------------------------------- textures


def smooth_field(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], cell_mm: float
) -> np.ndarray:
    """Smooth random field (zero mean, unit spread) varying over about ``cell_mm``: texture.

    Random values on a coarse lattice (with a margin, so edges vary as much as the centre) are
    spread to the grid by separable Gaussian weights: smooth, and much faster than zooming.
    """
    field = rng.standard_normal(
        tuple(math.ceil(n * d / cell_mm) + 3 for n, d in zip(shape, spacing, strict=True))
    ).astype(np.float32)
    for axis, n in enumerate(shape):
        nodes = field.shape[axis]
        offsets = np.linspace(1.0, nodes - 2.0, n)[:, None] - np.arange(nodes)[None, :]
        weights = np.exp(-0.5 * offsets**2).astype(np.float32)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return (field - field.mean()) / (field.std() + 1e-6)


# ------------------------------------------------------------------------------------ lesions


def place_lesions(
    labels: np.ndarray,
    grid: Grid,
    lut: np.ndarray,
    rng: np.random.Generator,
    count: int,
    sites: dict[str, tuple[int, float, float]],
    radius_mm: tuple[float, float],
    contrast: tuple[float, float],
) -> list[dict[str, Any]]:
    """Grow ``count`` spheroids, each inside one organ; ``sites`` maps a tissue name to its id,
    its chance and its largest lesion radius. Each lesion gets its own intensity id in ``lut``."""
    if not 0 <= count <= _MAX_LESIONS:
        raise ValueError(f"a phantom holds 0 to {_MAX_LESIONS} lesions, not {count}")
    present = {name: site for name, site in sites.items() if np.any(labels == site[0])}
    if count and not present:
        raise ValueError("the grid is too small to hold any organ a lesion could grow in")
    lesions = []
    for index in range(count):
        names = sorted(present)
        chances = np.array([present[n][1] for n in names])
        site = names[rng.choice(len(names), p=chances / chances.sum())]
        lesion = _place_lesion(labels, grid, rng, present[site], radius_mm, LESION_ID0 + index)
        sign = -1.0 if rng.random() < _HYPODENSE_CHANCE else 1.0
        delta = sign * rng.uniform(*contrast)
        lut[LESION_ID0 + index] = lut[present[site][0]] + delta
        lesions.append({"site": site, "contrast": round(float(delta), 2), **lesion})
    return lesions


def _place_lesion(
    labels: np.ndarray,
    grid: Grid,
    rng: np.random.Generator,
    site: tuple[int, float, float],
    radius_mm: tuple[float, float],
    lesion_id: int,
) -> dict[str, Any]:
    """Try a few centres inside the organ; keep the one whose spheroid lies most inside it."""
    host, _, largest = site
    candidates = np.flatnonzero(labels == host)
    best: tuple[float, tuple[slice, ...], np.ndarray, dict[str, Any]] | None = None
    for _ in range(_PLACEMENT_TRIES):
        index = np.unravel_index(candidates[rng.integers(candidates.size)], labels.shape)
        centre = tuple(float(axis[i]) for axis, i in zip(grid.axes, index, strict=True))
        radius = rng.uniform(min(radius_mm[0], largest), min(radius_mm[1], largest))
        radii = tuple(float(radius * r) for r in rng.uniform(0.8, 1.2, size=3))
        reach = max(radii[1], radii[2])
        box = grid.box(centre, (radii[0], reach, reach))
        inside = ellipsoid(grid, box, centre, radii, rng.uniform(0.0, math.pi))
        mask = inside & (labels[box] == host)
        fraction = mask.sum() / inside.sum()
        if best is None or fraction > best[0]:
            record = {
                "centre_mm": [round(c, 2) for c in centre],
                "radii_mm": [round(r, 2) for r in radii],
            }
            best = (fraction, box, mask, record)
        if fraction >= 0.85:
            break
    assert best is not None
    _, box, mask, record = best
    labels[box][mask] = lesion_id
    return {**record, "voxels": int(mask.sum())}


# ---------------------------------------------------------------------------------- rendering


def _gaussian_gain(sigma: Sequence[float]) -> float:
    """Factor by which the blur shrinks white noise's spread (to keep the requested noise level)."""
    delta = np.zeros((9, 9, 9), dtype=np.float64)
    delta[4, 4, 4] = 1.0
    return float(np.sqrt(np.sum(ndimage.gaussian_filter(delta, sigma) ** 2)))


def render_ct(
    labels: np.ndarray,
    lut: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    noise: float,
) -> np.ndarray:
    """HU = blur(tissue values + white noise): partial volume and correlated noise in one pass."""
    sigma = [_PARTIAL_VOLUME_MM / d for d in spacing]
    white = rng.standard_normal(labels.shape, dtype=np.float32)
    white *= np.float32(noise / _gaussian_gain(sigma))
    white += lut[labels]
    hu = ndimage.gaussian_filter(white, sigma, truncate=3.0)
    return np.rint(np.clip(hu, -1024, 3071)).astype(np.int16)


def render_mr(
    labels: np.ndarray,
    lut: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    noise: float,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Magnitude image: blurred tissue values under a smooth bias field, with Rician noise.

    ``bias`` (the grid's shape) multiplies the clean image; without it, a linear ramp per axis
    (+-8 %) drawn from ``rng`` does."""
    sigma = [_PARTIAL_VOLUME_MM / d for d in spacing]
    clean = ndimage.gaussian_filter(lut[labels], sigma, truncate=3.0)
    if bias is not None:
        clean *= bias
    for axis, n in enumerate(labels.shape if bias is None else ()):
        ramp = np.linspace(-1.0, 1.0, n, dtype=np.float32) * np.float32(rng.uniform(-0.08, 0.08))
        clean *= 1.0 + ramp.reshape([-1 if k == axis else 1 for k in range(3)])
    real = clean + rng.standard_normal(labels.shape, dtype=np.float32) * np.float32(noise)
    imaginary = rng.standard_normal(labels.shape, dtype=np.float32) * np.float32(noise)
    return np.rint(np.clip(np.hypot(real, imaginary), 0, 32767)).astype(np.int16)


def make_phantom(
    voxels: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    table: dict[str, tuple[float, float]],
    modality: str,
    lesions: list[dict[str, Any]],
    metadata: dict[str, Any],
    *,
    label: int | None = None,
    classes: tuple[str, ...] = CLASS_NAMES,
) -> Phantom:
    """The phantom of rendered ``voxels``; ``label`` defaults to 1 when any lesion id is painted."""
    lesion_mask = (labels >= LESION_ID0).astype(np.uint8)
    names = (*table, LESION)
    tissues = np.where(lesion_mask.astype(bool), np.uint8(len(table)), labels)
    label = int(lesion_mask.any()) if label is None else label
    metadata = {**metadata, "phantom_label": label, "phantom_lesions": lesions}
    volume = Volume(voxels=voxels, affine=affine, modality=modality, metadata=metadata)
    return Phantom(volume, lesion_mask, label, tissues, names, classes)
