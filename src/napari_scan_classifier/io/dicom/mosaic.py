"""Vendor mosaics: several slices tiled into one image."""

from __future__ import annotations

import math
import warnings

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from napari_scan_classifier.io.dicom.headers import (
    _acquisition_time,
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
    slope, intercept = _rescale(ds, file)
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
            order=_order(file, k),
        )
        for k in range(count)
    ]


def _uih_tiles(ds: Dataset, vendor: str) -> list[Dataset] | None:
    """The per-tile items of a United Imaging grid mosaic ((0065,1051): one IPP per tile);
    ``vendor``: the Manufacturer in upper case."""
    if vendor != "UIH":
        return None
    try:
        items = ds.get_private_item(0x0065, 0x51, "Image Private Header").value
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(items, Sequence) or len(items) < 2:
        return None
    return list(items) if all(_position(item) is not None for item in items) else None


def _uih_tile_shape(ds: Dataset) -> tuple[int, int] | None:
    """Tile rows and columns: UIH's "R*C" text (0065,1004), else the acquisition matrix."""
    try:
        text = str(ds.get_private_item(0x0065, 0x04, "Image Private Header").value)
        rows, cols = (int(v) for v in text.split("*"))
    except (KeyError, ValueError, TypeError):
        matrix = [int(float(v)) for v in _strings(ds, "AcquisitionMatrix") if float(v)]
        if len(matrix) != 2:
            return None
        rows, cols = (matrix[1], matrix[0])
    return (rows, cols) if rows > 0 and cols > 0 else None


def _uih_grid_frames(ds: Dataset, file: _File, items: list[Dataset]) -> list[_Frame]:
    """Tiles of a UIH grid mosaic (e.g. 4x5 tiles of 64x64), each placed by its own IPP and
    ordered in time by its own acquisition time, as dcm2niix reads them."""
    shape = _uih_tile_shape(ds)
    if shape is None or file.rows % shape[0] or file.cols % shape[1]:
        raise _SkipFileError("United Imaging mosaic whose tile size does not fit its image")
    tile_rows, tile_cols = shape
    per_row = file.cols // tile_cols
    if len(items) > per_row * (file.rows // tile_rows):
        raise _SkipFileError(
            f"United Imaging mosaic of {len(items)} tiles that do not fit its "
            f"{file.rows}x{file.cols} pixels (inconsistent header)"
        )
    file.mosaic = (tile_rows, tile_cols, per_row)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    spacing = _floats(ds, "PixelSpacing", 2)
    step = _float(ds, "SpacingBetweenSlices") or _float(ds, "SliceThickness")
    slope, intercept = _rescale(ds, file)
    return [
        _Frame(
            file,
            k,
            tile_rows,
            tile_cols,
            position=_position(item),
            orientation=iop,
            pixel_spacing=spacing,
            thickness=step,
            slope=slope,
            intercept=intercept,
            order=_order(file, k, when=_acquisition_time(item)),
        )
        for k, item in enumerate(items)
    ]


def _tile(image: np.ndarray, file: _File, index: int) -> np.ndarray:
    tile_rows, tile_cols, per_row = file.mosaic
    top, left = (index // per_row) * tile_rows, (index % per_row) * tile_cols
    return image[top : top + tile_rows, left : left + tile_cols]
