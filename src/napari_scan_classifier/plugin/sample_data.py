"""npe2 sample data: a phantom CT series (DICOM) and two phantom brain MR volumes (NIfTI), one
with a tumour, one with an infarct.

They are opened through the same reader as the user's files, so the sample shows exactly what a
real load does.
"""

from __future__ import annotations

from napari.types import FullLayerData

from napari_scan_classifier.plugin.reader import read_scans
from napari_scan_classifier.samples import sample_ct_path, sample_mr_infarct_path, sample_mr_path


def sample_ct() -> list[FullLayerData]:
    """The phantom CT series (DICOM folder)."""
    return read_scans(str(sample_ct_path()))


def sample_mr() -> list[FullLayerData]:
    """The phantom brain MR with a tumour (T1-like NIfTI)."""
    return read_scans(str(sample_mr_path()))


def sample_mr_infarct() -> list[FullLayerData]:
    """The phantom brain MR with an infarct (FLAIR-like NIfTI)."""
    return read_scans(str(sample_mr_infarct_path()))
