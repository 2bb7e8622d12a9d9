"""Deterministic synthetic CT and MRI scans with known lesions, for sample data, tests and demos.

No patient scan may ship with the package, yet the reader, the overlays and the classifier all need
realistic, labelled volumes with ground truth. Everything here is drawn from
``numpy.random.default_rng`` streams spawned from one seed, so a seed always gives the same voxels.
Each phantom uses three independent streams (anatomy, lesions, noise): ``make_case(s, 0)`` and
``make_case(s, 1)`` share anatomy and noise and differ only by the lesions, which makes paired tests
and lesion-only differences possible.

Geometry (world convention of :mod:`napari_scan_classifier.volume`: world = (I, P, L) mm)
------------------------------------------------------------------------------------------
- CT is stored like a head-first supine axial CT: rows run anterior to posterior (the belly at low
  y index), columns run from the patient's right to left (left at high x index), slices run
  superior to inferior (lungs at low z index). The affine is ``diag(dz, dy, dx)``: world I grows
  with the slice index, so the lungs have a smaller world I (are superior to) the kidneys.
- MR is stored as canonical NIfTI (i, j, k) -> (R, A, S), so every array axis runs against the world
  axis: the affine is ``diag(-dz, -dy, -dx)`` (superior slices at high z index). Readers and napari
  place it correctly through the affine alone.

Anatomy is drawn in a body frame (inferior, posterior, left mm from the body centre) that is shifted
and slightly rotated about the I axis per seed; in-plane sizes scale with the field of view, so any
grid shows a whole body cross-section, while lesion radii are in millimetres.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_scan_classifier.volume import Volume, nifti_to_zyx_affine

CLASS_NAMES = ("normal", "lesion")

# Nominal value and per-phantom jitter (+/-) of each tissue; the id of a tissue is its position.
CT_TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 10.0),
    "soft_tissue": (40.0, 6.0),
    "lung": (-850.0, 20.0),
    "blood": (42.0, 5.0),
    "liver": (60.0, 5.0),
    "spleen": (48.0, 4.0),
    "kidney": (30.0, 4.0),
    "bowel_gas": (-960.0, 20.0),
    "cortical_bone": (850.0, 100.0),
    "cancellous_bone": (400.0, 40.0),
    "disc": (85.0, 8.0),
    "csf": (12.0, 3.0),
}
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
_CT_ID = {name: i for i, name in enumerate(CT_TISSUES)}
_MR_ID = {name: i for i, name in enumerate(MR_TISSUES)}

# Where lesions grow, with the chance of each site.
_CT_LESION_SITES = {"liver": 0.6, "spleen": 0.2, "kidney": 0.2}
_MR_LESION_SITES = {"white_matter": 1.0}
_LESION_ID0 = 200  # painting ids 200 + i give each lesion its own intensity until rendering
_MAX_LESIONS = 50
_HYPODENSE_CHANCE = 0.65
_PLACEMENT_TRIES = 12
_PARTIAL_VOLUME_MM = 0.8  # Gaussian blur standing in for the scanner's point spread

CT_WINDOW = (40.0, 400.0)  # soft-tissue window (centre, width) used for the sample series


@dataclass
class Phantom:
    """A synthetic scan with its ground truth: the tissue of every voxel and the lesion voxels.

    ``volume.metadata`` also carries ``phantom_label`` and ``phantom_lesions``: one dict per
    lesion with its ``site`` (tissue), ``contrast`` (vs that tissue, HU or MR units),
    ``centre_mm`` (world I, P, L), ``radii_mm`` and ``voxels``; plain JSON, safe to store.
    """

    volume: Volume
    lesion_mask: np.ndarray  # uint8 on the volume's grid: 1 lesion, 0 elsewhere
    label: int  # index into CLASS_NAMES: 1 when any lesion voxel exists
    tissues: np.ndarray  # uint8 tissue id per voxel, ids index tissue_names
    tissue_names: tuple[str, ...]

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]

    def tissue_mask(self, name: str) -> np.ndarray:
        """Boolean mask of one tissue (a name from ``tissue_names``)."""
        return self.tissues == self.tissue_names.index(name)


@dataclass(frozen=True)
class _Grid:
    """World coordinates along each axis of an axis-aligned grid, plus the anatomy's pose."""

    axes: tuple[np.ndarray, np.ndarray, np.ndarray]  # world I, P, L of each z, y, x index
    spacing: tuple[float, float, float]  # mm along z, y, x
    centre: tuple[float, float, float]  # world (I, P, L) of the body/head centre
    angle: float  # in-plane rotation of the patient about the I axis, radians

    @classmethod
    def from_affine(
        cls, affine: np.ndarray, shape: Sequence[int], centre: Sequence[float], angle: float
    ) -> _Grid:
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


def _streams(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent anatomy, lesion and noise generators, so lesions never perturb the anatomy."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def _vary(rng: np.random.Generator, value: float, relative: float) -> float:
    return value * rng.uniform(1.0 - relative, 1.0 + relative)


def _ellipsoid(
    grid: _Grid,
    box: tuple[slice, ...],
    centre: Sequence[float],
    radii: Sequence[float],
    angle: float,
) -> np.ndarray:
    w, v, u = grid.local(box, centre, angle)
    return (w / radii[0]) ** 2 + (v / radii[1]) ** 2 + (u / radii[2]) ** 2 <= 1.0


def _paint_ellipsoid(
    labels: np.ndarray,
    grid: _Grid,
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
    mask = _ellipsoid(grid, box, centre, radii, grid.angle + angle)
    if into is not None:
        mask = mask & np.isin(region, into)
    region[mask] = tissue


def _tissue_lut(table: dict[str, tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    """Per-phantom intensity of every tissue id (lesion ids are filled in when placed)."""
    lut = np.zeros(256, dtype=np.float32)
    for tissue_id, (value, jitter) in enumerate(table.values()):
        lut[tissue_id] = value + rng.uniform(-jitter, jitter)
    return lut


# ----------------------------------------------------------------------------------------- CT


@dataclass(frozen=True)
class _Torso:
    """Inner (below the subcutaneous fat) half-axes of the body and the scanned length, in mm."""

    half_left: float
    half_posterior: float
    length: float
    z_shift: float

    def fraction(self, grid: _Grid) -> np.ndarray:
        """Position of every slice as a fraction of the scan from its top (inverse of ``point``)."""
        return (grid.axes[0] - grid.centre[0] - self.z_shift) / self.length + 0.5

    def point(self, grid: _Grid, f: float, v: float, u: float) -> tuple[float, float, float]:
        """World point at fraction ``f`` of the scan from the top, (v, u) in inner half-axes."""
        w = (f - 0.5) * self.length + self.z_shift
        return grid.to_world(w, v * self.half_posterior, u * self.half_left)

    def radii(self, f: float, v: float, u: float) -> tuple[float, float, float]:
        return (f * self.length, v * self.half_posterior, u * self.half_left)


def _centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Diagonal affine putting the grid's centre at (0, 0, 0) mm."""
    affine = np.eye(4)
    for k, (n, d) in enumerate(zip(shape, spacing, strict=True)):
        affine[k, k] = d
        affine[k, 3] = -d * (n - 1) / 2.0
    return affine


def _ct_pose(
    rng: np.random.Generator, affine: np.ndarray, shape: Sequence[int]
) -> tuple[_Grid, _Torso, float, float]:
    """Body placement and size: the grid, the inner torso, the subcutaneous fat thickness (mm)
    and the exponent of the torso's superellipse outline."""
    span = _Grid.from_affine(affine, shape, (0.0, 0.0, 0.0), 0.0).fov
    half_left = rng.uniform(0.36, 0.43) * span[2]
    half_posterior = min(half_left * rng.uniform(0.62, 0.8), 0.4 * span[1])
    centre = (0.0, rng.uniform(-0.05, 0.05) * span[1], rng.uniform(-0.05, 0.05) * span[2])
    grid = _Grid.from_affine(affine, shape, centre, math.radians(rng.uniform(-6.0, 6.0)))
    fat = rng.uniform(0.06, 0.16) * half_posterior
    torso = _Torso(
        half_left - fat, half_posterior - fat, span[0], rng.uniform(-0.05, 0.05) * span[0]
    )
    return grid, torso, fat, rng.uniform(2.2, 2.8)


def _body_radius(grid: _Grid, half_axes: tuple[float, float], power: float) -> np.ndarray:
    """Superellipse radius (1 on the outline) of every in-plane position: a torso-like section."""
    v, u = grid.plane()
    radius = np.abs(u / half_axes[0]) ** power + np.abs(v / half_axes[1]) ** power
    return radius ** (1.0 / power)


def _paint_body(
    labels: np.ndarray, grid: _Grid, torso: _Torso, fat: float, power: float
) -> np.ndarray:
    """Fat ring around soft tissue, air outside; returns the inner in-plane radius for the ribs."""
    outer = (torso.half_left + fat, torso.half_posterior + fat)
    labels[:, _body_radius(grid, outer, power) <= 1.0] = _CT_ID["fat"]
    inner = _body_radius(grid, (torso.half_left, torso.half_posterior), power)
    labels[:, inner <= 1.0] = _CT_ID["soft_tissue"]
    return inner


def _paint_ribs(
    labels: np.ndarray, grid: _Grid, torso: _Torso, inner: np.ndarray, rng: np.random.Generator
) -> None:
    """Rib arcs inside the body wall, sloping down from the spine to the front (so an axial slice
    cuts short segments), thorax only, open at the sternum and the spine."""
    v, u = grid.plane()
    shell = (inner >= 0.85) & (inner <= 0.93)
    shell &= ~((v < 0) & (np.abs(u) < 0.3 * torso.half_left))
    shell &= ~((v > 0) & (np.abs(u) < 0.2 * torso.half_left))
    where = np.flatnonzero(shell)
    from_back = np.arctan2(np.abs(u.ravel()[where]), v.ravel()[where]) / math.pi  # 0 back, 1 front
    depth = torso.fraction(grid) * torso.length  # mm below the top of the scan
    period = rng.uniform(22.0, 28.0)
    along = depth[:, None] - rng.uniform(30.0, 50.0) * from_back[None] + rng.uniform(0.0, period)
    rib = (along % period < rng.uniform(7.0, 9.0)) & (
        depth < rng.uniform(0.55, 0.65) * torso.length
    )[:, None]
    flat = labels.reshape(labels.shape[0], -1)
    columns = flat[:, where]
    columns[rib] = _CT_ID["cortical_bone"]
    flat[:, where] = columns


def _paint_viscera(
    labels: np.ndarray, grid: _Grid, torso: _Torso, inner: np.ndarray, rng: np.random.Generator
) -> None:
    """Below the diaphragm, mesenteric fat and a little bowel gas among the soft tissue, so
    organs stand out against a textured background as on real CT."""
    v, _ = grid.plane()
    cavity = (inner < 0.82) & (v < 0.35 * torso.half_posterior)
    below = torso.fraction(grid) > rng.uniform(0.3, 0.38)
    region = below[:, None, None] & cavity[None]
    texture = _smooth_field(rng, labels.shape, grid.spacing, cell_mm=8.0)
    labels[region & (texture > rng.uniform(0.2, 0.6))] = _CT_ID["fat"]
    labels[region & (texture < -2.2)] = _CT_ID["bowel_gas"]


def _paint_abdomen(
    labels: np.ndarray, grid: _Grid, torso: _Torso, rng: np.random.Generator
) -> dict[str, float]:
    """Liver, spleen and kidneys; returns each organ's smallest half-axis (bounds lesion size)."""
    organs = {
        "liver": ((0.55, 0.0, -0.38), (0.22, 0.75, 0.55), 0.0),
        "spleen": ((0.5, 0.3, 0.62), (0.1, 0.3, 0.22), 0.3),
    }
    smallest = {}
    for name, (where, size, angle) in organs.items():
        radii = torso.radii(*(_vary(rng, s, 0.12) for s in size))
        centre = torso.point(grid, *(c + rng.uniform(-0.03, 0.03) for c in where))
        _paint_ellipsoid(labels, grid, centre, radii, _CT_ID[name], angle=angle)
        smallest[name] = min(radii)
    smallest["kidney"] = min(_paint_kidney(labels, grid, torso, rng, side) for side in (-1, 1))
    return smallest


def _paint_kidney(
    labels: np.ndarray, grid: _Grid, torso: _Torso, rng: np.random.Generator, side: int
) -> float:
    """One kidney (side -1 right, +1 left) with its sinus fat; returns its smallest half-axis."""
    f = 0.7 + (0.03 if side < 0 else 0.0) + rng.uniform(-0.03, 0.03)
    u = side * _vary(rng, 0.38, 0.08)
    radii = torso.radii(*(_vary(rng, s, 0.12) for s in (0.1, 0.22, 0.15)))
    angle = -side * rng.uniform(0.2, 0.45)
    centre = torso.point(grid, f, 0.5, u)
    perirenal = tuple(r * 1.5 for r in radii)
    soft = [_CT_ID[name] for name in ("soft_tissue", "liver", "spleen")]
    _paint_ellipsoid(labels, grid, centre, perirenal, _CT_ID["fat"], angle=angle, into=soft)
    _paint_ellipsoid(labels, grid, centre, radii, _CT_ID["kidney"], angle=angle)
    sinus = torso.point(grid, f, 0.5, u - side * 0.4 * radii[2] / torso.half_left)
    _paint_ellipsoid(
        labels,
        grid,
        sinus,
        tuple(0.4 * r for r in radii),
        _CT_ID["fat"],
        angle=angle,
        into=[_CT_ID["kidney"]],
    )
    return min(radii)


def _paint_thorax(labels: np.ndarray, grid: _Grid, torso: _Torso, rng: np.random.Generator) -> None:
    """Lungs (domed bases over liver and spleen), then heart and aorta between them."""
    soft = [
        _CT_ID[name] for name in ("soft_tissue", "fat", "bowel_gas", "liver", "spleen", "kidney")
    ]
    top = rng.uniform(0.1, 0.16)
    for side in (-1, 1):
        length = _vary(rng, 0.34, 0.06) * (0.92 if side < 0 else 1.0)  # right dome sits higher
        radii = torso.radii(length, _vary(rng, 0.72, 0.06), _vary(rng, 0.4, 0.06))
        centre = torso.point(grid, top, 0.05, side * _vary(rng, 0.47, 0.04))
        _paint_ellipsoid(labels, grid, centre, radii, _CT_ID["lung"], into=soft)
    heart = torso.point(grid, top + 0.13, -0.25, rng.uniform(0.08, 0.16))
    radii = torso.radii(_vary(rng, 0.14, 0.1), _vary(rng, 0.42, 0.1), _vary(rng, 0.38, 0.1))
    _paint_ellipsoid(
        labels, grid, heart, radii, _CT_ID["blood"], angle=-0.5, into=[*soft, _CT_ID["lung"]]
    )
    aorta = torso.point(grid, 0.5, 0.3, 0.12)
    width = _vary(rng, 0.1, 0.15) * torso.half_left
    _paint_ellipsoid(labels, grid, aorta, (math.inf, width, width), _CT_ID["blood"])


def _paint_spine(labels: np.ndarray, grid: _Grid, torso: _Torso, rng: np.random.Generator) -> None:
    """Vertebral bodies (cortex, cancellous core, discs) and the arch around the spinal canal."""
    v0 = _vary(rng, 0.58, 0.04)
    body = (
        math.inf,
        _vary(rng, 0.17, 0.08) * torso.half_posterior,
        _vary(rng, 0.16, 0.08) * torso.half_left,
    )
    centre = torso.point(grid, 0.5, v0, 0.0)
    _paint_ellipsoid(labels, grid, centre, body, _CT_ID["cortical_bone"])
    core = (math.inf, body[1] - 1.5, body[2] - 1.5)
    _paint_ellipsoid(labels, grid, centre, core, _CT_ID["cancellous_bone"])
    _paint_discs(labels, grid, centre, body, rng)
    canal = 0.07 * torso.half_posterior
    behind = v0 + (body[1] + canal + 2.0) / torso.half_posterior
    arch = torso.point(grid, 0.5, behind, 0.0)
    _paint_ellipsoid(
        labels, grid, arch, (math.inf, canal + 2.5, 1.8 * canal + 2.5), _CT_ID["cortical_bone"]
    )
    _paint_ellipsoid(labels, grid, arch, (math.inf, canal, 1.5 * canal), _CT_ID["csf"])


def _paint_discs(
    labels: np.ndarray,
    grid: _Grid,
    centre: Sequence[float],
    body: Sequence[float],
    rng: np.random.Generator,
) -> None:
    period = rng.uniform(26.0, 32.0)
    in_disc = ((grid.axes[0] + rng.uniform(0.0, period)) % period) < rng.uniform(5.0, 7.0)
    box = grid.box(centre, (math.inf, body[1], body[2]))
    region = labels[box]
    vertebra = _ellipsoid(grid, box, centre, body, grid.angle) & in_disc[box[0], None, None]
    region[vertebra] = _CT_ID["disc"]


# ----------------------------------------------------------------------------------------- MR


def _smooth_field(
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


def _mr_pose(
    rng: np.random.Generator, affine: np.ndarray, shape: Sequence[int]
) -> tuple[_Grid, np.ndarray]:
    """Head placement and scalp half-axes (I, P, L) in mm, scaled to fit the field of view."""
    span = _Grid.from_affine(affine, shape, (0.0, 0.0, 0.0), 0.0).fov
    scale = min(1.0, 0.9 * span[1] / 2 / 92.0, 0.9 * span[2] / 2 / 74.0) * rng.uniform(0.92, 1.04)
    head = np.array([86.0, 92.0, 74.0]) * scale
    top = -span[0] / 2 + head[0] + rng.uniform(2.0, 8.0)  # keep the vertex in the field of view
    centre = (top, rng.uniform(-4.0, 4.0), rng.uniform(-4.0, 4.0))
    return _Grid.from_affine(affine, shape, centre, math.radians(rng.uniform(-5.0, 5.0))), head


def _paint_head(
    labels: np.ndarray, grid: _Grid, head: np.ndarray, rng: np.random.Generator
) -> float:
    """Scalp, skull, CSF, folded grey/white matter; returns white matter's smallest half-axis."""
    for name, scale in (("scalp", 1.0), ("skull", 0.93), ("csf", 0.88)):
        _paint_ellipsoid(labels, grid, grid.centre, head * scale, _MR_ID[name])
    full = tuple(slice(None) for _ in range(3))
    brain = head * 0.86
    w, v, u = grid.local(full, grid.centre, grid.angle)
    radius = np.sqrt((w / brain[0]) ** 2 + (v / brain[1]) ** 2 + (u / brain[2]) ** 2)
    folds = _smooth_field(rng, labels.shape, grid.spacing, cell_mm=rng.uniform(5.5, 7.0))
    labels[radius <= 1.0] = _MR_ID["grey_matter"]
    labels[(radius <= 1.0) & (radius > 1.0 + 0.25 * (folds + 0.6))] = _MR_ID["csf"]  # sulci
    white = rng.uniform(0.78, 0.84)
    gyri = radius <= np.minimum(white + 0.12 * folds, 0.93)
    labels[gyri & (labels == _MR_ID["grey_matter"])] = _MR_ID["white_matter"]
    _paint_deep_structures(labels, grid, brain, rng)
    return float(min(brain) * (white - 0.2))


def _paint_deep_structures(
    labels: np.ndarray, grid: _Grid, brain: np.ndarray, rng: np.random.Generator
) -> None:
    """Thalami (grey) and lateral ventricles (CSF), mirrored about the midline."""
    ventricle = brain * np.array([_vary(rng, 0.16, 0.2), 0.42, _vary(rng, 0.08, 0.25)])
    for side in (-1, 1):
        thalamus = grid.to_world(0.05 * brain[0], 0.12 * brain[1], side * 0.14 * brain[2])
        _paint_ellipsoid(labels, grid, thalamus, brain * 0.13, _MR_ID["grey_matter"])
        centre = grid.to_world(-0.1 * brain[0], -0.05 * brain[1], side * 0.12 * brain[2])
        _paint_ellipsoid(labels, grid, centre, ventricle, _MR_ID["csf"], angle=side * 0.15)


# ------------------------------------------------------------------------------------ lesions


def _place_lesions(
    labels: np.ndarray,
    grid: _Grid,
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
        lesion = _place_lesion(labels, grid, rng, present[site], radius_mm, _LESION_ID0 + index)
        sign = -1.0 if rng.random() < _HYPODENSE_CHANCE else 1.0
        delta = sign * rng.uniform(*contrast)
        lut[_LESION_ID0 + index] = lut[present[site][0]] + delta
        lesions.append({"site": site, "contrast": round(float(delta), 2), **lesion})
    return lesions


def _place_lesion(
    labels: np.ndarray,
    grid: _Grid,
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
        inside = _ellipsoid(grid, box, centre, radii, rng.uniform(0.0, math.pi))
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


def _render_ct(
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


def _render_mr(
    labels: np.ndarray,
    lut: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    noise: float,
) -> np.ndarray:
    """Magnitude image: blurred tissue values under a smooth bias field, with Rician noise."""
    sigma = [_PARTIAL_VOLUME_MM / d for d in spacing]
    clean = ndimage.gaussian_filter(lut[labels], sigma, truncate=3.0)
    for axis, n in enumerate(labels.shape):
        ramp = np.linspace(-1.0, 1.0, n, dtype=np.float32) * np.float32(rng.uniform(-0.08, 0.08))
        clean *= 1.0 + ramp.reshape([-1 if k == axis else 1 for k in range(3)])
    real = clean + rng.standard_normal(labels.shape, dtype=np.float32) * np.float32(noise)
    imaginary = rng.standard_normal(labels.shape, dtype=np.float32) * np.float32(noise)
    return np.rint(np.clip(np.hypot(real, imaginary), 0, 32767)).astype(np.int16)


def _phantom(
    voxels: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    table: dict[str, tuple[float, float]],
    modality: str,
    lesions: list[dict[str, Any]],
    metadata: dict[str, Any],
) -> Phantom:
    lesion_mask = (labels >= _LESION_ID0).astype(np.uint8)
    names = (*table, LESION)
    tissues = np.where(lesion_mask.astype(bool), np.uint8(len(table)), labels)
    label = int(lesion_mask.any())
    metadata = {**metadata, "phantom_label": label, "phantom_lesions": lesions}
    volume = Volume(voxels=voxels, affine=affine, modality=modality, metadata=metadata)
    return Phantom(volume, lesion_mask, label, tissues, names)


# ------------------------------------------------------------------------------------ public


def make_ct_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (80, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 1.5, 1.5),
    lesions: int | None = None,
    *,
    lesion_radius_mm: tuple[float, float] = (4.0, 20.0),
    lesion_contrast_hu: tuple[float, float] = (25.0, 60.0),
    noise_hu: float | None = None,
) -> Phantom:
    """A chest/abdomen CT in Hounsfield units (int16): body wall, lungs, heart, liver, spleen,
    kidneys, spine and ribs, with ``lesions`` spheroids in liver, spleen or kidney (``None``: 1-3).

    Lesions are hypo- or hyperdense by ``lesion_contrast_hu`` against their organ; ``noise_hu``
    (default: 10-25 HU by seed) is the standard deviation of the correlated image noise.
    """
    anatomy, lesion_rng, noise_rng = _streams(seed)
    affine = _centred_affine(shape, spacing)
    grid, torso, fat, power = _ct_pose(anatomy, affine, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    inner = _paint_body(labels, grid, torso, fat, power)
    _paint_viscera(labels, grid, torso, inner, anatomy)
    smallest = _paint_abdomen(labels, grid, torso, anatomy)
    _paint_thorax(labels, grid, torso, anatomy)
    _paint_ribs(labels, grid, torso, inner, anatomy)
    _paint_spine(labels, grid, torso, anatomy)
    lut = _tissue_lut(CT_TISSUES, anatomy)
    sites = {n: (_CT_ID[n], p, 0.6 * smallest[n]) for n, p in _CT_LESION_SITES.items()}
    count = int(lesion_rng.integers(1, 4)) if lesions is None else lesions
    found = _place_lesions(
        labels, grid, lut, lesion_rng, count, sites, lesion_radius_mm, lesion_contrast_hu
    )
    noise = noise_rng.uniform(10.0, 25.0) if noise_hu is None else noise_hu
    metadata = {
        "series_description": f"Synthetic CT phantom (seed {seed})",
        "body_part": "ABDOMEN",
        "units": "HU",
        "window_center": CT_WINDOW[0],
        "window_width": CT_WINDOW[1],
    }
    hu = _render_ct(labels, lut, spacing, noise_rng, noise)
    return _phantom(hu, labels, affine, CT_TISSUES, "CT", found, metadata)


def make_mr_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (56, 96, 96),
    spacing: tuple[float, float, float] = (3.0, 2.0, 2.0),
    lesions: int | None = None,
    *,
    lesion_radius_mm: tuple[float, float] = (3.0, 12.0),
    lesion_contrast: tuple[float, float] = (150.0, 350.0),
    noise_sigma: float | None = None,
) -> Phantom:
    """A T1-like brain MRI (int16, arbitrary units 0-1000): scalp, skull, CSF, folded grey and
    white matter, thalami, ventricles, with ``lesions`` white-matter spheroids (``None``: 1-3).

    Stored as canonical RAS NIfTI would be (see the module docstring); ``noise_sigma`` (default
    8-20 by seed) is the Rician noise level.
    """
    anatomy, lesion_rng, noise_rng = _streams(seed)
    affine = nifti_to_zyx_affine(_centred_affine(shape[::-1], spacing[::-1]))
    grid, head = _mr_pose(anatomy, affine, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    white = _paint_head(labels, grid, head, anatomy)
    lut = _tissue_lut(MR_TISSUES, anatomy)
    sites = {n: (_MR_ID[n], p, 0.35 * white) for n, p in _MR_LESION_SITES.items()}
    count = int(lesion_rng.integers(1, 4)) if lesions is None else lesions
    found = _place_lesions(
        labels, grid, lut, lesion_rng, count, sites, lesion_radius_mm, lesion_contrast
    )
    noise = noise_rng.uniform(8.0, 20.0) if noise_sigma is None else noise_sigma
    metadata = {
        "series_description": f"Synthetic T1 brain phantom (seed {seed})",
        "body_part": "HEAD",
    }
    voxels = _render_mr(labels, lut, spacing, noise_rng, noise)
    return _phantom(voxels, labels, affine, MR_TISSUES, "MR", found, metadata)


def make_head_ct_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (64, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 1.6, 1.6),
    *,
    noise_hu: float | None = None,
) -> Phantom:
    """A non-contrast head CT in Hounsfield units (int16), stored like the body CT (axial,
    head-first supine): the MR phantom's head (scalp, skull, CSF, folded grey and white matter,
    ventricles) without lesions. Another body region for a body-CT model."""
    anatomy, _lesion_rng, noise_rng = _streams(seed)
    affine = _centred_affine(shape, spacing)
    grid, head = _mr_pose(anatomy, affine, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    _paint_head(labels, grid, head, anatomy)
    lut = _tissue_lut(HEAD_CT_TISSUES, anatomy)
    noise = noise_rng.uniform(4.0, 10.0) if noise_hu is None else noise_hu
    metadata = {
        "series_description": f"Synthetic head CT phantom (seed {seed})",
        "body_part": "HEAD",
        "units": "HU",
        "window_center": 40.0,
        "window_width": 80.0,
    }
    hu = _render_ct(labels, lut, spacing, noise_rng, noise)
    return _phantom(hu, labels, affine, HEAD_CT_TISSUES, "CT", [], metadata)


_CASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "CT": {
        "spacing": (2.5, 1.5, 1.5),
        "lesion_radius_mm": (5.0, 15.0),
        "lesion_contrast_hu": (20.0, 60.0),
    },
    "MR": {
        "spacing": (2.5, 2.0, 2.0),
        "lesion_radius_mm": (4.0, 12.0),
        "lesion_contrast": (80.0, 250.0),
    },
}


def make_case(
    seed: int,
    label: int,
    modality: str = "CT",
    shape: tuple[int, int, int] = (64, 96, 96),
    spacing: tuple[float, float, float] | None = None,
) -> Phantom:
    """One training case of class ``label`` (0 normal, 1 at least one lesion).

    Lesions are subtle enough that a classifier has to learn them (20-60 HU on CT, 5-15 mm).
    The anatomy and noise depend on ``seed`` only, so the two labels of one seed form a pair.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 ({CLASS_NAMES[0]}) or 1 ({CLASS_NAMES[1]}), got {label}")
    if modality not in _CASE_DEFAULTS:
        raise ValueError(f"modality must be one of {sorted(_CASE_DEFAULTS)}, got {modality!r}")
    defaults = _CASE_DEFAULTS[modality]
    options = {key: value for key, value in defaults.items() if key != "spacing"}
    grid_spacing = defaults["spacing"] if spacing is None else spacing
    make = make_ct_phantom if modality == "CT" else make_mr_phantom
    return make(seed, shape, grid_spacing, None if label else 0, **options)


def make_cases(
    n: int,
    seed: int = 0,
    positive_fraction: float = 0.5,
    modality: str = "CT",
    shape: tuple[int, int, int] = (64, 96, 96),
    spacing: tuple[float, float, float] | None = None,
) -> Iterator[Phantom]:
    """Yield ``n`` cases, ``round(n * positive_fraction)`` of them with lesions, in shuffled order.

    Cases are generated lazily (a training set need not fit in memory) and each has its own seed,
    derived from ``seed``, so the same arguments always give the same sequence.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be within [0, 1], got {positive_fraction}")
    sequence = np.random.SeedSequence(seed)
    positives = round(n * positive_fraction)
    labels = np.random.default_rng(sequence).permutation([1] * positives + [0] * (n - positives))
    for child, label in zip(sequence.spawn(n), labels, strict=True):
        case_seed = int(child.generate_state(1)[0])
        yield make_case(case_seed, int(label), modality, shape, spacing)


SAMPLE_CT_SEED = 8  # seeds picked for clearly visible lesions: one hyper-, one hypodense
SAMPLE_MR_SEED = 2


def sample_ct_phantom() -> Phantom:
    """The CT written as sample data (72 slices of 128 x 128, two lesions) with its ground truth."""
    return make_ct_phantom(
        SAMPLE_CT_SEED,
        shape=(72, 128, 128),
        lesions=2,
        lesion_radius_mm=(12.0, 18.0),
        lesion_contrast_hu=(60.0, 90.0),
    )


def sample_mr_phantom() -> Phantom:
    """The MR written as sample data (one white-matter lesion) with its ground truth."""
    return make_mr_phantom(SAMPLE_MR_SEED, lesions=1, lesion_radius_mm=(6.0, 10.0))


def _sample_uid(*parts: object) -> str:
    """A UID fixed by its parts (pydicom's root + a hash), so regenerating never changes files."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["napari-scan-classifier sample", *map(str, parts)])


def write_sample_data(out_dir: str | Path) -> list[Path]:
    """Write the package's sample scans into ``out_dir``; returns the written paths.

    ``ct_phantom/``: :func:`sample_ct_phantom` as an axial CT series, one DICOM file per slice.
    ``mr_phantom.nii.gz``: :func:`sample_mr_phantom` as NIfTI.
    """
    from napari_scan_classifier.io.dicom_write import write_series
    from napari_scan_classifier.io.nifti import save_nifti

    out_dir = Path(out_dir)
    series = write_series(
        sample_ct_phantom().volume,
        out_dir / "ct_phantom",
        series_description="Synthetic CT phantom",
        series_number=1,
        study_uid=_sample_uid("study", SAMPLE_CT_SEED),
        series_uid=_sample_uid("series", SAMPLE_CT_SEED),
        window=CT_WINDOW,
    )
    return [*series, save_nifti(sample_mr_phantom().volume, out_dir / "mr_phantom.nii.gz")]


def main(argv: Sequence[str] | None = None) -> None:
    """Regenerate the sample data (``python -m napari_scan_classifier.phantoms --out DIR``)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default="sample_data", help="folder to write into")
    args = parser.parse_args(argv)
    for path in write_sample_data(args.out):
        print(path)


if __name__ == "__main__":
    main()
