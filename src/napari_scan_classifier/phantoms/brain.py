"""Brain MR phantoms of three classes: ``normal``, ``tumour`` and ``infarct``.

- **tumour**: a lobulated mass in the white matter (8-18 mm radius when clear) with vasogenic
  oedema spreading through the surrounding white matter; about half are necrotic with an
  enhancing rim (a ring on the T1-like contrast, read as post-contrast).
- **infarct**: a wedge in the territory of one cerebral artery (anterior, middle or posterior),
  cortex plus the white matter under it, from the deep white matter out to the brain surface:
  slightly dark on T1, bright on FLAIR.

Acquisitions vary per seed: T1-like or FLAIR-like contrast, field of view, in-plane voxel size,
slice thickness, the storage direction of each axis (the orientation a reader meets), a smooth
multiplicative bias field, the scanner's arbitrary gain and the Rician noise. Four independent
streams (anatomy, lesion, noise, acquisition) make the three classes of one seed a set that shares
anatomy, acquisition and noise and differs only by the lesion.

``conspicuity`` scales each lesion's intensity difference from the tissue it replaces (1: the
nominal contrast below); ``size`` scales its extent. :data:`CLEAR` and :data:`SUBTLE` are the two
ranges the demo model is trained and measured on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_scan_classifier.phantoms.common import (
    LESION_ID0,
    Grid,
    Phantom,
    centred_affine,
    make_phantom,
    render_mr,
    smooth_field,
    streams,
)
from napari_scan_classifier.phantoms.head import MR_ID, MR_TISSUES, head_pose, paint_head

BRAIN_CLASSES = ("normal", "tumour", "infarct")
CONTRASTS = ("T1", "FLAIR")
# Nominal intensity of each tissue per contrast (tissue ids as in MR_TISSUES, lesion ids after).
_TISSUE_VALUES: dict[str, dict[str, float]] = {
    "T1": {
        "background": 0.0,
        "scalp": 720.0,
        "skull": 90.0,
        "csf": 160.0,
        "grey_matter": 430.0,
        "white_matter": 620.0,
        "tumour": 330.0,
        "necrosis": 170.0,
        "rim": 820.0,
        "oedema": 520.0,
        "infarct_cortex": 385.0,
        "infarct_white": 545.0,
    },
    "FLAIR": {
        "background": 0.0,
        "scalp": 520.0,
        "skull": 50.0,
        "csf": 80.0,
        "grey_matter": 470.0,
        "white_matter": 360.0,
        "tumour": 610.0,
        "necrosis": 260.0,
        "rim": 600.0,
        "oedema": 660.0,
        "infarct_cortex": 720.0,
        "infarct_white": 650.0,
    },
}
_TISSUE_JITTER = 0.05  # relative, per tissue and phantom
LESION_TISSUES = ("tumour", "necrosis", "rim", "oedema", "infarct_cortex", "infarct_white")
_LESION_ID = {name: LESION_ID0 + i for i, name in enumerate(LESION_TISSUES)}
_HOST = {  # the tissue each lesion tissue replaces, for its contrast against it
    "tumour": "white_matter",
    "necrosis": "white_matter",
    "rim": "white_matter",
    "oedema": "white_matter",
    "infarct_cortex": "grey_matter",
    "infarct_white": "white_matter",
}
# Territories: azimuth from the front (degrees, 0 anterior, 90 lateral, 180 posterior) and
# height (fraction of the brain's half-height, negative superior) each artery supplies.
TERRITORIES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "ACA": ((8.0, 60.0), (-0.95, 0.05)),
    "MCA": ((55.0, 130.0), (-0.6, 0.45)),
    "PCA": ((130.0, 175.0), (-0.15, 0.6)),
}
_RING_CHANCE = 0.5
_MIN_LESION_VOXELS = 30


@dataclass(frozen=True)
class Lesions:
    """Ranges the lesion of a brain phantom is drawn from."""

    conspicuity: tuple[float, float]  # x the nominal contrast against the host tissue
    tumour_radius_mm: tuple[float, float]
    infarct_width: tuple[float, float]  # x the territory's angular and height ranges


CLEAR = Lesions(conspicuity=(0.8, 1.2), tumour_radius_mm=(8.0, 18.0), infarct_width=(0.6, 1.0))
SUBTLE = Lesions(conspicuity=(0.35, 0.6), tumour_radius_mm=(5.0, 9.0), infarct_width=(0.3, 0.5))


@dataclass(frozen=True)
class Acquisition:
    """How a brain phantom is scanned: contrast and grid, orientation, bias, gain and noise."""

    contrast: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    flips: tuple[bool, bool, bool]  # axes stored along (not against) world I, P, L
    bias: float  # spread of the log bias field
    gain: float  # the scanner's arbitrary unit
    noise: float  # Rician sigma, relative to white matter

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        contrast: str | None = None,
        shape: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> Acquisition:
        """A random acquisition; ``contrast``, ``shape`` and ``spacing`` fix those parts."""
        picked = CONTRASTS[int(rng.integers(len(CONTRASTS)))]
        thickness, pixel = rng.uniform(3.0, 6.0), rng.uniform(1.4, 2.2)
        fov_z, fov_xy = rng.uniform(150.0, 180.0), rng.uniform(200.0, 240.0)
        drawn = (thickness, pixel, pixel)
        spacing3 = tuple(float(s) for s in (spacing or drawn))
        fov = (fov_z, fov_xy, fov_xy)
        shape3 = tuple(
            int(n) for n in (shape or [round(f / d) for f, d in zip(fov, spacing3, strict=True)])
        )
        flips = tuple(bool(f) for f in rng.random(3) < 0.5)
        bias, gain, noise = rng.uniform(0.05, 0.2), rng.uniform(0.5, 3.0), rng.uniform(0.01, 0.04)
        if contrast is not None and contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {CONTRASTS}, not {contrast!r}")
        return cls(contrast or picked, shape3, spacing3, flips, bias, gain, noise)  # type: ignore[arg-type]

    def affine(self) -> np.ndarray:
        """Axis-aligned, centred on the field of view; a flipped axis runs along its world axis,
        the others against it (canonical RAS NIfTI runs against all three)."""
        affine = centred_affine(self.shape, self.spacing)
        for k, along in enumerate(self.flips):
            if not along:
                affine[k, k] *= -1.0
                affine[k, 3] *= -1.0
        return affine


def make_brain_mr_phantom(
    seed: int = 0,
    lesion: str = "normal",
    *,
    lesions: Lesions = CLEAR,
    contrast: str | None = None,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
) -> Phantom:
    """A brain MR (int16, arbitrary units) of class ``lesion`` (one of :data:`BRAIN_CLASSES`).

    The same ``seed`` gives the same head, acquisition and noise for every class; ``contrast``,
    ``shape`` and ``spacing`` override the seed's acquisition.
    """
    if lesion not in BRAIN_CLASSES:
        raise ValueError(f"lesion must be one of {BRAIN_CLASSES}, not {lesion!r}")
    anatomy, lesion_rng, noise_rng, scanner = streams(seed, 4)
    scan = Acquisition.draw(scanner, contrast, shape, spacing)
    affine = scan.affine()
    grid, head = head_pose(anatomy, affine, scan.shape)
    labels = np.zeros(scan.shape, dtype=np.uint8)
    paint_head(labels, grid, head, anatomy)
    lut = _lut(scan.contrast, anatomy, lesion_rng, lesions.conspicuity)
    found: list[dict[str, Any]] = []
    if lesion == "tumour":
        found = [_paint_tumour(labels, grid, lesion_rng, lesions)]
    elif lesion == "infarct":
        found = [_paint_infarct(labels, grid, head * 0.86, lesion_rng, lesions)]
    bias = np.exp(np.float32(scan.bias) * smooth_field(scanner, scan.shape, scan.spacing, 60.0))
    white = lut[MR_ID["white_matter"]]
    voxels = render_mr(labels, lut * scan.gain, scan.spacing, noise_rng, scan.noise * white, bias)
    metadata = {
        "series_description": f"Synthetic {scan.contrast} brain MR phantom (seed {seed})",
        "body_part": "HEAD",
    }
    return make_phantom(
        voxels,
        labels,
        affine,
        MR_TISSUES,
        "MR",
        found,
        metadata,
        label=BRAIN_CLASSES.index(lesion),
        classes=BRAIN_CLASSES,
    )


def brain_triplet(seed: int, **options: Any) -> list[Phantom]:
    """The three classes of one seed: same head, acquisition and noise, lesion apart."""
    return [make_brain_mr_phantom(seed, name, **options) for name in BRAIN_CLASSES]


def _lut(
    contrast: str,
    anatomy: np.random.Generator,
    lesion_rng: np.random.Generator,
    conspicuity: tuple[float, float],
) -> np.ndarray:
    """Intensity of every tissue id: anatomy jittered from ``anatomy``, lesion tissues at
    ``conspicuity`` x their nominal contrast against their host (drawn from the lesion stream,
    so the anatomy's values are the same for every class)."""
    values = _TISSUE_VALUES[contrast]
    lut = np.zeros(256, dtype=np.float32)
    for tissue_id, name in enumerate(MR_TISSUES):
        lut[tissue_id] = values[name] * anatomy.uniform(1 - _TISSUE_JITTER, 1 + _TISSUE_JITTER)
    scale = lesion_rng.uniform(*conspicuity)
    for name, tissue_id in _LESION_ID.items():
        host = _HOST[name]
        lut[tissue_id] = lut[MR_ID[host]] + scale * (values[name] - values[host])
    return lut


def _paint_tumour(
    labels: np.ndarray, grid: Grid, rng: np.random.Generator, lesions: Lesions
) -> dict[str, Any]:
    """A lobulated mass centred in white matter, oedema through the white matter around it, and
    with :data:`_RING_CHANCE` a necrotic core inside an enhancing rim."""
    white = np.flatnonzero(labels == MR_ID["white_matter"])
    index = np.unravel_index(white[rng.integers(white.size)], labels.shape)
    centre = tuple(float(axis[i]) for axis, i in zip(grid.axes, index, strict=True))
    radius = float(rng.uniform(*lesions.tumour_radius_mm))
    radii = radius * rng.uniform(0.8, 1.2, size=3)
    reach = 3.0 * radius
    box = grid.box(centre, (reach, reach, reach))
    w, v, u = grid.local(box, centre, rng.uniform(0.0, math.pi))
    distance = np.sqrt((w / radii[0]) ** 2 + (v / radii[1]) ** 2 + (u / radii[2]) ** 2)
    shape = tuple(s.stop - s.start for s in box)
    lobes = smooth_field(rng, shape, grid.spacing, cell_mm=max(radius, 6.0))
    distance = distance * (1.0 + 0.12 * lobes)
    region = labels[box]
    brain = np.isin(region, [MR_ID["grey_matter"], MR_ID["white_matter"]])
    spread = rng.uniform(1.6, 2.4)
    region[(distance <= spread * (1.0 + 0.2 * lobes)) & (region == MR_ID["white_matter"])] = (
        _LESION_ID["oedema"]
    )
    mass = (distance <= 1.0) & (brain | (region >= LESION_ID0))
    ring = bool(rng.random() < _RING_CHANCE)
    region[mass] = _LESION_ID["rim" if ring else "tumour"]
    if ring:
        region[mass & (distance <= rng.uniform(0.55, 0.75))] = _LESION_ID["necrosis"]
    return {
        "site": "tumour",
        "ring": ring,
        "centre_mm": [round(c, 2) for c in centre],
        "radii_mm": [round(float(r), 2) for r in radii],
        "oedema_extent": round(float(spread), 2),
        "voxels": int(np.count_nonzero(region >= LESION_ID0)),
    }


def _paint_infarct(
    labels: np.ndarray,
    grid: Grid,
    brain: np.ndarray,
    rng: np.random.Generator,
    lesions: Lesions,
) -> dict[str, Any]:
    """Grey and white matter within a wedge of one artery's territory on one side, from the deep
    white matter to the surface: a sector of azimuths and heights, narrowed by ``infarct_width``
    and frayed by a smooth field; retried a few times until it lies in the field of view."""
    full = tuple(slice(None) for _ in range(3))
    w, v, u = grid.local(full, grid.centre, grid.angle)
    height = w / brain[0]
    radius = np.sqrt(height**2 + (v / brain[1]) ** 2 + (u / brain[2]) ** 2)
    fray = smooth_field(rng, labels.shape, grid.spacing, cell_mm=12.0)
    tissue = np.isin(labels, [MR_ID["grey_matter"], MR_ID["white_matter"]])
    for _ in range(8):
        side = 1.0 if rng.random() < 0.5 else -1.0
        territory = list(TERRITORIES)[int(rng.integers(len(TERRITORIES)))]
        (az_lo, az_hi), (h_lo, h_hi) = TERRITORIES[territory]
        fraction = rng.uniform(*lesions.infarct_width)
        az_span, h_span = fraction * (az_hi - az_lo), fraction * (h_hi - h_lo)
        az0 = rng.uniform(az_lo, az_hi - az_span)
        h0 = rng.uniform(h_lo, h_hi - h_span)
        azimuth = np.degrees(np.arctan2(side * u, -v)) + 6.0 * fray
        wedge = (azimuth >= az0) & (azimuth <= az0 + az_span) & (side * u > 0)
        wedge &= (height >= h0) & (height <= h0 + h_span)
        wedge &= radius >= rng.uniform(0.35, 0.5) + 0.05 * fray
        mask = wedge & tissue
        if np.count_nonzero(mask) >= _MIN_LESION_VOXELS:
            break
    grey = mask & (labels == MR_ID["grey_matter"])
    labels[mask] = _LESION_ID["infarct_white"]
    labels[grey] = _LESION_ID["infarct_cortex"]
    return {
        "site": "infarct",
        "territory": territory,
        "side": "left" if side > 0 else "right",
        "azimuth_deg": [round(az0, 1), round(az0 + az_span, 1)],
        "height": [round(h0, 2), round(h0 + h_span, 2)],
        "voxels": int(np.count_nonzero(mask)),
    }
