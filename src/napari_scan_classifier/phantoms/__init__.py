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

from napari_scan_classifier.phantoms.brain import (
    BRAIN_CLASSES,
    CLEAR,
    CONTRASTS,
    SUBTLE,
    TERRITORIES,
    Lesions,
    brain_triplet,
    make_brain_mr_phantom,
)
from napari_scan_classifier.phantoms.common import CLASS_NAMES, LESION, Phantom
from napari_scan_classifier.phantoms.ct import (
    CT_TISSUES,
    CT_WINDOW,
    make_ct_phantom,
    make_head_ct_phantom,
)
from napari_scan_classifier.phantoms.head import HEAD_CT_TISSUES, MR_TISSUES
from napari_scan_classifier.phantoms.mr import make_mr_phantom
from napari_scan_classifier.phantoms.samples import (
    SAMPLE_CT_SEED,
    SAMPLE_MR_INFARCT,
    SAMPLE_MR_SEED,
    SAMPLE_MR_TUMOUR,
    main,
    make_case,
    make_cases,
    sample_ct_phantom,
    sample_mr_infarct_phantom,
    sample_mr_phantom,
    write_sample_data,
)

__all__ = [
    "BRAIN_CLASSES",
    "CLASS_NAMES",
    "CLEAR",
    "CONTRASTS",
    "CT_TISSUES",
    "CT_WINDOW",
    "HEAD_CT_TISSUES",
    "LESION",
    "MR_TISSUES",
    "SAMPLE_CT_SEED",
    "SAMPLE_MR_INFARCT",
    "SAMPLE_MR_SEED",
    "SAMPLE_MR_TUMOUR",
    "SUBTLE",
    "TERRITORIES",
    "Lesions",
    "Phantom",
    "brain_triplet",
    "main",
    "make_brain_mr_phantom",
    "make_case",
    "make_cases",
    "make_ct_phantom",
    "make_head_ct_phantom",
    "make_mr_phantom",
    "sample_ct_phantom",
    "sample_mr_infarct_phantom",
    "sample_mr_phantom",
    "write_sample_data",
]
