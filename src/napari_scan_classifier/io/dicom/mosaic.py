"""Vendor mosaics: several slices tiled into one image."""

from __future__ import annotations

import math
import warnings

import numpy as np
from pydicom.dataset import Dataset

from napari_scan_classifier.io.dicom.headers import (
    _float,
    _floats,
    _order,
    _position,
    _rescale,
    _strings,
    _ushort,
)
from napari_scan_classifier.io.dicom.records import _DEFAULT_IOP, _File, _Frame, _SkipFileError


def _csa_image_header(ds: Dataset) -> dict | None:
    """Siemens' CSA image header, parsed by nibabel (None when absent or unreadable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel.nicom announces itself as experimental
        from nibabel.nicom import csareader
    try:
        return csareader.get_csa_header(ds, "image")
    except Exception:
        return None


def _csa_value(csa: dict | None, name: str) -> list | None:
    items = ((csa or {}).get("tags", {}).get(name) or {}).get("items")
    return items or None


def _mosaic_layout(ds: Dataset, csa: dict | None) -> tuple[int, int, int, int]:
    """(tiles, tile rows, tile columns, tiles per row) of a Siemens mosaic."""
    rows, cols = _ushort(ds, "Rows", 0), _ushort(ds, "Columns", 0)
    try:
        count = int(ds.get_private_item(0x0019, 0x0A, "SIEMENS MR HEADER").value)
    except (KeyError, ValueError, TypeError):
        count = int((_csa_value(csa, "NumberOfImagesInMosaic") or [0])[0])
    if count > 0:
        per_row = math.ceil(math.sqrt(count))
        if rows % per_row or cols % per_row:
            raise _SkipFileError(
                f"Siemens mosaic of {count} tiles that do not fit its "
                f"{rows}x{cols} pixels (inconsistent header)"
            )
        return count, rows // per_row, cols // per_row, per_row
    matrix = [int(v) for v in _strings(ds, "AcquisitionMatrix") if int(v)]
    padded = [*matrix, 0, 0]
    for tile_rows, tile_cols in (padded[:2], padded[1::-1]):
        if (
            tile_rows
            and tile_cols
            and not rows % tile_rows
            and not cols % tile_cols
            and rows // tile_rows == cols // tile_cols
        ):
            per_row = rows // tile_rows
            return per_row * per_row, tile_rows, tile_cols, per_row
    raise _SkipFileError("Siemens mosaic whose tile layout is not recorded")


def _mosaic_frames(ds: Dataset, file: _File) -> list[_Frame]:
    """Tiles of a Siemens mosaic as slices. The mosaic's IPP is that of the whole mosaic image;
    it is moved to the first tile as dcm2niix/nibabel do, then stepped along the CSA normal."""
    csa = _csa_image_header(ds)
    count, tile_rows, tile_cols, per_row = _mosaic_layout(ds, csa)
    file.mosaic = (tile_rows, tile_cols, per_row)
    iop = _floats(ds, "ImageOrientationPatient", 6) or _DEFAULT_IOP
    spacing = _floats(ds, "PixelSpacing", 2) or (1.0, 1.0)
    row_cos, col_cos = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_cos, col_cos)
    csa_normal = _csa_value(csa, "SliceNormalVector")
    if csa_normal and len(csa_normal) == 3:
        normal = np.asarray(csa_normal, float) / np.linalg.norm(np.asarray(csa_normal, float))
    step = _float(ds, "SpacingBetweenSlices") or _float(ds, "SliceThickness") or 1.0
    origin = _position(ds)
    if origin is not None:
        origin = (
            origin
            + col_cos * spacing[0] * (file.rows - tile_rows) / 2
            + row_cos * spacing[1] * (file.cols - tile_cols) / 2
        )
    slope, intercept = _rescale(ds, ds)
    return [
        _Frame(
            file,
            k,
            tile_rows,
            tile_cols,
            position=None if origin is None else origin + k * step * normal,
            orientation=iop,
            pixel_spacing=spacing,
            thickness=step,
            slope=slope,
            intercept=intercept,
            order=(*_order(ds, file.path)[:5], k),
        )
        for k in range(count)
    ]


def _tile(image: np.ndarray, file: _File, index: int) -> np.ndarray:
    tile_rows, tile_cols, per_row = file.mosaic
    top, left = (index // per_row) * tile_rows, (index % per_row) * tile_cols
    return image[top : top + tile_rows, left : left + tile_cols]
