"""CT phantoms: a chest/abdomen CT with organ lesions and a lesion-free head CT, both in
Hounsfield units and stored like a head-first supine axial CT (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_scan_classifier.phantoms.common import (
    Grid,
    Phantom,
    centred_affine,
    ellipsoid,
    make_phantom,
    paint_ellipsoid,
    place_lesions,
    render_ct,
    smooth_field,
    streams,
    tissue_lut,
    vary,
)
from napari_scan_classifier.phantoms.head import HEAD_CT_TISSUES, head_pose, paint_head

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
_CT_ID = {name: i for i, name in enumerate(CT_TISSUES)}
# Where lesions grow, with the chance of each site.
_CT_LESION_SITES = {"liver": 0.6, "spleen": 0.2, "kidney": 0.2}
CT_WINDOW = (40.0, 400.0)  # soft-tissue window (centre, width) used for the sample series


@dataclass(frozen=True)
class _Torso:
    """Inner (below the subcutaneous fat) half-axes of the body and the scanned length, in mm."""

    half_left: float
    half_posterior: float
    length: float
    z_shift: float

    def fraction(self, grid: Grid) -> np.ndarray:
        """Position of every slice as a fraction of the scan from its top (inverse of ``point``)."""
        return (grid.axes[0] - grid.centre[0] - self.z_shift) / self.length + 0.5

    def point(self, grid: Grid, f: float, v: float, u: float) -> tuple[float, float, float]:
        """World point at fraction ``f`` of the scan from the top, (v, u) in inner half-axes."""
        w = (f - 0.5) * self.length + self.z_shift
        return grid.to_world(w, v * self.half_posterior, u * self.half_left)

    def radii(self, f: float, v: float, u: float) -> tuple[float, float, float]:
        return (f * self.length, v * self.half_posterior, u * self.half_left)


def _ct_pose(
    rng: np.random.Generator, affine: np.ndarray, shape: Sequence[int]
) -> tuple[Grid, _Torso, float, float]:
    """Body placement and size: the grid, the inner torso, the subcutaneous fat thickness (mm)
    and the exponent of the torso's superellipse outline."""
    span = Grid.from_affine(affine, shape, (0.0, 0.0, 0.0), 0.0).fov
    half_left = rng.uniform(0.36, 0.43) * span[2]
    half_posterior = min(half_left * rng.uniform(0.62, 0.8), 0.4 * span[1])
    centre = (0.0, rng.uniform(-0.05, 0.05) * span[1], rng.uniform(-0.05, 0.05) * span[2])
    grid = Grid.from_affine(affine, shape, centre, math.radians(rng.uniform(-6.0, 6.0)))
    fat = rng.uniform(0.06, 0.16) * half_posterior
    torso = _Torso(
        half_left - fat, half_posterior - fat, span[0], rng.uniform(-0.05, 0.05) * span[0]
    )
    return grid, torso, fat, rng.uniform(2.2, 2.8)


def _body_radius(grid: Grid, half_axes: tuple[float, float], power: float) -> np.ndarray:
    """Superellipse radius (1 on the outline) of every in-plane position: a torso-like section."""
    v, u = grid.plane()
    radius = np.abs(u / half_axes[0]) ** power + np.abs(v / half_axes[1]) ** power
    return radius ** (1.0 / power)


def _paint_body(
    labels: np.ndarray, grid: Grid, torso: _Torso, fat: float, power: float
) -> np.ndarray:
    """Fat ring around soft tissue, air outside; returns the inner in-plane radius for the ribs."""
    outer = (torso.half_left + fat, torso.half_posterior + fat)
    labels[:, _body_radius(grid, outer, power) <= 1.0] = _CT_ID["fat"]
    inner = _body_radius(grid, (torso.half_left, torso.half_posterior), power)
    labels[:, inner <= 1.0] = _CT_ID["soft_tissue"]
    return inner


def _paint_ribs(
    labels: np.ndarray, grid: Grid, torso: _Torso, inner: np.ndarray, rng: np.random.Generator
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
    labels: np.ndarray, grid: Grid, torso: _Torso, inner: np.ndarray, rng: np.random.Generator
) -> None:
    """Below the diaphragm, mesenteric fat and a little bowel gas among the soft tissue, so
    organs stand out against a textured background as on real CT."""
    v, _ = grid.plane()
    cavity = (inner < 0.82) & (v < 0.35 * torso.half_posterior)
    below = torso.fraction(grid) > rng.uniform(0.3, 0.38)
    region = below[:, None, None] & cavity[None]
    texture = smooth_field(rng, labels.shape, grid.spacing, cell_mm=8.0)
    labels[region & (texture > rng.uniform(0.2, 0.6))] = _CT_ID["fat"]
    labels[region & (texture < -2.2)] = _CT_ID["bowel_gas"]


def _paint_abdomen(
    labels: np.ndarray, grid: Grid, torso: _Torso, rng: np.random.Generator
) -> dict[str, float]:
    """Liver, spleen and kidneys; returns each organ's smallest half-axis (bounds lesion size)."""
    organs = {
        "liver": ((0.55, 0.0, -0.38), (0.22, 0.75, 0.55), 0.0),
        "spleen": ((0.5, 0.3, 0.62), (0.1, 0.3, 0.22), 0.3),
    }
    smallest = {}
    for name, (where, size, angle) in organs.items():
        radii = torso.radii(*(vary(rng, s, 0.12) for s in size))
        centre = torso.point(grid, *(c + rng.uniform(-0.03, 0.03) for c in where))
        paint_ellipsoid(labels, grid, centre, radii, _CT_ID[name], angle=angle)
        smallest[name] = min(radii)
    smallest["kidney"] = min(_paint_kidney(labels, grid, torso, rng, side) for side in (-1, 1))
    return smallest


def _paint_kidney(
    labels: np.ndarray, grid: Grid, torso: _Torso, rng: np.random.Generator, side: int
) -> float:
    """One kidney (side -1 right, +1 left) with its sinus fat; returns its smallest half-axis."""
    f = 0.7 + (0.03 if side < 0 else 0.0) + rng.uniform(-0.03, 0.03)
    u = side * vary(rng, 0.38, 0.08)
    radii = torso.radii(*(vary(rng, s, 0.12) for s in (0.1, 0.22, 0.15)))
    angle = -side * rng.uniform(0.2, 0.45)
    centre = torso.point(grid, f, 0.5, u)
    perirenal = tuple(r * 1.5 for r in radii)
    soft = [_CT_ID[name] for name in ("soft_tissue", "liver", "spleen")]
    paint_ellipsoid(labels, grid, centre, perirenal, _CT_ID["fat"], angle=angle, into=soft)
    paint_ellipsoid(labels, grid, centre, radii, _CT_ID["kidney"], angle=angle)
    sinus = torso.point(grid, f, 0.5, u - side * 0.4 * radii[2] / torso.half_left)
    paint_ellipsoid(
        labels,
        grid,
        sinus,
        tuple(0.4 * r for r in radii),
        _CT_ID["fat"],
        angle=angle,
        into=[_CT_ID["kidney"]],
    )
    return min(radii)


def _paint_thorax(labels: np.ndarray, grid: Grid, torso: _Torso, rng: np.random.Generator) -> None:
    """Lungs (domed bases over liver and spleen), then heart and aorta between them."""
    soft = [
        _CT_ID[name] for name in ("soft_tissue", "fat", "bowel_gas", "liver", "spleen", "kidney")
    ]
    top = rng.uniform(0.1, 0.16)
    for side in (-1, 1):
        length = vary(rng, 0.34, 0.06) * (0.92 if side < 0 else 1.0)  # right dome sits higher
        radii = torso.radii(length, vary(rng, 0.72, 0.06), vary(rng, 0.4, 0.06))
        centre = torso.point(grid, top, 0.05, side * vary(rng, 0.47, 0.04))
        paint_ellipsoid(labels, grid, centre, radii, _CT_ID["lung"], into=soft)
    heart = torso.point(grid, top + 0.13, -0.25, rng.uniform(0.08, 0.16))
    radii = torso.radii(vary(rng, 0.14, 0.1), vary(rng, 0.42, 0.1), vary(rng, 0.38, 0.1))
    paint_ellipsoid(
        labels, grid, heart, radii, _CT_ID["blood"], angle=-0.5, into=[*soft, _CT_ID["lung"]]
    )
    aorta = torso.point(grid, 0.5, 0.3, 0.12)
    width = vary(rng, 0.1, 0.15) * torso.half_left
    paint_ellipsoid(labels, grid, aorta, (math.inf, width, width), _CT_ID["blood"])


def _paint_spine(labels: np.ndarray, grid: Grid, torso: _Torso, rng: np.random.Generator) -> None:
    """Vertebral bodies (cortex, cancellous core, discs) and the arch around the spinal canal."""
    v0 = vary(rng, 0.58, 0.04)
    body = (
        math.inf,
        vary(rng, 0.17, 0.08) * torso.half_posterior,
        vary(rng, 0.16, 0.08) * torso.half_left,
    )
    centre = torso.point(grid, 0.5, v0, 0.0)
    paint_ellipsoid(labels, grid, centre, body, _CT_ID["cortical_bone"])
    core = (math.inf, body[1] - 1.5, body[2] - 1.5)
    paint_ellipsoid(labels, grid, centre, core, _CT_ID["cancellous_bone"])
    _paint_discs(labels, grid, centre, body, rng)
    canal = 0.07 * torso.half_posterior
    behind = v0 + (body[1] + canal + 2.0) / torso.half_posterior
    arch = torso.point(grid, 0.5, behind, 0.0)
    paint_ellipsoid(
        labels, grid, arch, (math.inf, canal + 2.5, 1.8 * canal + 2.5), _CT_ID["cortical_bone"]
    )
    paint_ellipsoid(labels, grid, arch, (math.inf, canal, 1.5 * canal), _CT_ID["csf"])


def _paint_discs(
    labels: np.ndarray,
    grid: Grid,
    centre: Sequence[float],
    body: Sequence[float],
    rng: np.random.Generator,
) -> None:
    period = rng.uniform(26.0, 32.0)
    in_disc = ((grid.axes[0] + rng.uniform(0.0, period)) % period) < rng.uniform(5.0, 7.0)
    box = grid.box(centre, (math.inf, body[1], body[2]))
    region = labels[box]
    vertebra = ellipsoid(grid, box, centre, body, grid.angle) & in_disc[box[0], None, None]
    region[vertebra] = _CT_ID["disc"]


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
    anatomy, lesion_rng, noise_rng = streams(seed)
    affine = centred_affine(shape, spacing)
    grid, torso, fat, power = _ct_pose(anatomy, affine, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    inner = _paint_body(labels, grid, torso, fat, power)
    _paint_viscera(labels, grid, torso, inner, anatomy)
    smallest = _paint_abdomen(labels, grid, torso, anatomy)
    _paint_thorax(labels, grid, torso, anatomy)
    _paint_ribs(labels, grid, torso, inner, anatomy)
    _paint_spine(labels, grid, torso, anatomy)
    lut = tissue_lut(CT_TISSUES, anatomy)
    sites = {n: (_CT_ID[n], p, 0.6 * smallest[n]) for n, p in _CT_LESION_SITES.items()}
    count = int(lesion_rng.integers(1, 4)) if lesions is None else lesions
    found = place_lesions(
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
    hu = render_ct(labels, lut, spacing, noise_rng, noise)
    return make_phantom(hu, labels, affine, CT_TISSUES, "CT", found, metadata)


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
    anatomy, _lesion_rng, noise_rng = streams(seed)
    affine = centred_affine(shape, spacing)
    grid, head = head_pose(anatomy, affine, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    paint_head(labels, grid, head, anatomy)
    lut = tissue_lut(HEAD_CT_TISSUES, anatomy)
    noise = noise_rng.uniform(4.0, 10.0) if noise_hu is None else noise_hu
    metadata = {
        "series_description": f"Synthetic head CT phantom (seed {seed})",
        "body_part": "HEAD",
        "units": "HU",
        "window_center": 40.0,
        "window_width": 80.0,
    }
    hu = render_ct(labels, lut, spacing, noise_rng, noise)
    return make_phantom(hu, labels, affine, HEAD_CT_TISSUES, "CT", [], metadata)
