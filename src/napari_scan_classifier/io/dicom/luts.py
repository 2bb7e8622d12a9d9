"""Lookup tables that give stored pixel values their meaning: grey palettes, Modality LUTs."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut

from napari_scan_classifier.io.dicom.headers import _tag, _text
from napari_scan_classifier.io.dicom.records import _File, _SkipFileError

_MAX_TABLE_BITS = 16  # tables are built over every stored value: at most 65536 entries


def _smallest_dtype(values: np.ndarray) -> np.dtype:
    """int16/int32 for integral values that fit, else float32."""
    if np.all(np.isfinite(values)) and np.all(values == np.rint(values)):
        for dtype in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if values.min() >= info.min and values.max() <= info.max:
                return np.dtype(dtype)
    return np.dtype(np.float32)


def value_table(ds: Dataset, file: _File) -> tuple[int, np.ndarray] | None:
    """(first stored value, the value of each stored value) for a palette-colour image whose
    palette is grey, or an image with a Modality LUT Sequence; None when neither applies.

    A palette with colour is refused: colour images are not scans this package classifies.
    """
    palette = _text(ds, "PhotometricInterpretation") == "PALETTE COLOR"
    if not palette and _tag("ModalityLUTSequence") not in ds:
        return None
    bits = min(file.bits_stored, file.bits_allocated)
    if not 0 < bits <= _MAX_TABLE_BITS:
        raise _SkipFileError(f"a lookup table on {bits}-bit pixels is not supported")
    signed = file.signed and not palette
    low = -(2 ** (bits - 1)) if signed else 0
    stored = np.arange(low, low + 2**bits, dtype=np.int32 if signed else np.uint16)
    try:
        if palette:
            rgb = apply_color_lut(stored.astype(np.uint16 if bits > 8 else np.uint8), ds)
            if not (np.array_equal(rgb[:, 0], rgb[:, 1]) and np.array_equal(rgb[:, 0], rgb[:, 2])):
                raise _SkipFileError("palette colour (RGB) images are not supported as scans")
            values = rgb[:, 0].astype(np.float64)
        else:
            values = np.asarray(apply_modality_lut(stored, ds), np.float64)
    except _SkipFileError:
        raise
    except Exception as exc:
        raise _SkipFileError(f"its lookup table cannot be read ({type(exc).__name__})") from None
    return low, values.astype(_smallest_dtype(values))
