"""Training cases, the package's sample scans and the command that writes them
(``python -m napari_scan_classifier.phantoms --out sample_data``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_scan_classifier.phantoms.brain import make_brain_mr_phantom
from napari_scan_classifier.phantoms.common import CLASS_NAMES, Phantom
from napari_scan_classifier.phantoms.ct import CT_WINDOW, make_ct_phantom
from napari_scan_classifier.phantoms.mr import make_mr_phantom

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
SAMPLE_MR_SEED = 5  # one head: a ring-enhancing tumour on T1, a middle cerebral artery infarct
SAMPLE_MR_SHAPE = (36, 128, 128)
SAMPLE_MR_SPACING = (4.5, 1.8, 1.8)
SAMPLE_MR_TUMOUR = "mr_brain_tumour.nii.gz"
SAMPLE_MR_INFARCT = "mr_brain_infarct.nii.gz"


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
    """The brain MR with a tumour written as sample data (T1-like: a ring-enhancing mass with
    oedema), with its ground truth."""
    return _sample_brain("tumour", "T1")


def sample_mr_infarct_phantom() -> Phantom:
    """The brain MR with an infarct written as sample data (FLAIR-like: a wedge in the right
    middle cerebral artery territory; the same head as :func:`sample_mr_phantom`)."""
    return _sample_brain("infarct", "FLAIR")


def _sample_brain(lesion: str, contrast: str) -> Phantom:
    return make_brain_mr_phantom(
        SAMPLE_MR_SEED,
        lesion,
        contrast=contrast,
        shape=SAMPLE_MR_SHAPE,
        spacing=SAMPLE_MR_SPACING,
    )


def _sample_uid(*parts: object) -> str:
    """A UID fixed by its parts (pydicom's root + a hash), so regenerating never changes files."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["napari-scan-classifier sample", *map(str, parts)])


def write_sample_data(out_dir: str | Path) -> list[Path]:
    """Write the package's sample scans into ``out_dir``; returns the written paths.

    ``ct_phantom/``: :func:`sample_ct_phantom` as an axial CT series, one DICOM file per slice.
    ``mr_brain_tumour.nii.gz`` and ``mr_brain_infarct.nii.gz``: :func:`sample_mr_phantom` and
    :func:`sample_mr_infarct_phantom` as NIfTI.
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
    mr = [
        save_nifti(sample_mr_phantom().volume, out_dir / SAMPLE_MR_TUMOUR),
        save_nifti(sample_mr_infarct_phantom().volume, out_dir / SAMPLE_MR_INFARCT),
    ]
    return [*series, *mr]


def main(argv: Sequence[str] | None = None) -> None:
    """Regenerate the sample data (``python -m napari_scan_classifier.phantoms --out DIR``)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default="sample_data", help="folder to write into")
    args = parser.parse_args(argv)
    for path in write_sample_data(args.out):
        print(path)


if __name__ == "__main__":
    main()
