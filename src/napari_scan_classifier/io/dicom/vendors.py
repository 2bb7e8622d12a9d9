"""Vendor conventions that change what a file's pixels mean (GE reverse phase encoding)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from napari_scan_classifier.io.dicom.headers import _int

# GE research "epi_pepolar" sequences: (0019,10B3) "user data 12" says which volumes were
# acquired with reversed phase encoding (1: all, 2: odd, 3: even temporal positions).
_GE_PEPOLAR_ALL, _GE_PEPOLAR_ODD, _GE_PEPOLAR_EVEN = 1, 2, 3


def _private(ds: Dataset, group: int, element: int, creator: str) -> str:
    try:
        return str(ds.get_private_item(group, element, creator).value).strip()
    except (KeyError, ValueError, TypeError):
        return ""


def ge_reverse_phase(ds: Dataset, vendor: str) -> tuple[bool, bool]:
    """(whether this GE pepolar volume was acquired with reversed phase encoding, whether it is
    split off as series number + 1000) following dcm2niix, which flips such volumes along the
    phase-encoding (row) axis so every volume shows the anatomy the same way up.
    ``vendor``: the Manufacturer in upper case."""
    if not vendor.startswith("GE"):
        return False, False
    if "epi_pepolar" not in _private(ds, 0x0019, 0x9C, "GEMS_ACQU_01"):
        return False, False
    try:
        mode = round(float(_private(ds, 0x0019, 0xB3, "GEMS_ACQU_01")))
    except ValueError:
        return False, False
    volume = _int(ds, "TemporalPositionIdentifier")
    if mode == _GE_PEPOLAR_ALL:
        return True, False
    if volume > 0 and (
        (mode == _GE_PEPOLAR_ODD and volume % 2 == 1)
        or (mode == _GE_PEPOLAR_EVEN and volume % 2 == 0)
    ):
        return True, True
    return False, False
