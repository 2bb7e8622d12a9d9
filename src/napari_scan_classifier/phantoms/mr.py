"""MR phantoms: a T1-like head with white-matter spheroids (:func:`make_mr_phantom`) and the
brain MR with a tumour, an infarct or neither (:func:`make_brain_mr_phantom`)."""

from __future__ import annotations

import numpy as np

from napari_scan_classifier.phantoms.common import (
    Phantom,
    centred_affine,
    make_phantom,
    place_lesions,
    render_mr,
    streams,
    tissue_lut,
)
from napari_scan_classifier.phantoms.head import MR_ID, MR_TISSUES, head_pose, paint_head
from napari_scan_classifier.volume import nifti_to_zyx_affine

_MR_LESION_SITES = {"white_matter": 1.0}


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
    anatomy, lesion_rng, noise_rng = streams(seed)
    affine = nifti_to_zyx_affine(centred_affine(shape[::-1], spacing[::-1]))
    grid, head = head_pose(anatomy, affine, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    white = paint_head(labels, grid, head, anatomy)
    lut = tissue_lut(MR_TISSUES, anatomy)
    sites = {n: (MR_ID[n], p, 0.35 * white) for n, p in _MR_LESION_SITES.items()}
    count = int(lesion_rng.integers(1, 4)) if lesions is None else lesions
    found = place_lesions(
        labels, grid, lut, lesion_rng, count, sites, lesion_radius_mm, lesion_contrast
    )
    noise = noise_rng.uniform(8.0, 20.0) if noise_sigma is None else noise_sigma
    metadata = {
        "series_description": f"Synthetic T1 brain phantom (seed {seed})",
        "body_part": "HEAD",
    }
    voxels = render_mr(labels, lut, spacing, noise_rng, noise)
    return make_phantom(voxels, labels, affine, MR_TISSUES, "MR", found, metadata)
