"""Header fields read once per file with ``stop_before_pixels``, cheaply, without patient data."""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from napari_scan_classifier.io.dicom.records import _File, _SkipFileError

_NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}


_PIXEL_DATA = (0x7FE0, 0x0010)


_FLOAT_PIXEL_DATA = {(0x7FE0, 0x0008), (0x7FE0, 0x0009)}


_UNDEFINED_LENGTH = 0xFFFFFFFF


_NOT_IMAGES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "RTPLAN", "REG", "RWV"}


_FRAME_TIME_POINTERS = {0x00181063, 0x00181065}  # Frame Time, Frame Time Vector


@functools.cache
def _tag(keyword: str) -> BaseTag:
    return Tag(keyword)


def _strings(ds: Dataset | None, keyword: str) -> list[str]:
    """An element's values as strings, split from the raw bytes.

    pydicom converts a value in ~30 us, which dominates reading hundreds of slice headers;
    string-valued elements (CS, DS, IS, UI) are cheap to split directly.
    """
    elem = ds.get_item(_tag(keyword)) if ds is not None else None
    value = elem.value if elem is not None else None
    if value is None:
        return []
    if isinstance(value, bytes):
        text = value.decode("latin-1").strip(" \0")
        return [v.strip(" \0") for v in text.split("\\")] if text else []
    if isinstance(value, str | int | float):
        return [str(value)]
    return [str(v) for v in value]


def _text(ds: Dataset | None, keyword: str) -> str:
    values = _strings(ds, keyword)
    return values[0] if values else ""


def _floats(ds: Dataset | None, keyword: str, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in _strings(ds, keyword))
    except ValueError:
        return None
    return numbers if len(numbers) == count else None


def _float(ds: Dataset | None, keyword: str, default: float | None = None) -> float | None:
    try:
        return float(_strings(ds, keyword)[0])
    except (IndexError, ValueError):
        return default


def _int(ds: Dataset | None, keyword: str, default: int = 0) -> int:
    number = _float(ds, keyword)
    return int(number) if number is not None else default


def _ushort(ds: Dataset, keyword: str, default: int) -> int:
    """A US element (Rows, BitsAllocated, ...), decoded from its raw bytes."""
    elem = ds.get_item(_tag(keyword))
    value = elem.value if elem is not None else None
    if isinstance(value, bytes):
        if len(value) < 2:
            return default
        little = ds.original_encoding[1] is not False
        return struct.unpack("<H" if little else ">H", value[:2])[0]
    return int(value) if value is not None else default


def _position(ds: Dataset | None) -> np.ndarray | None:
    numbers = _floats(ds, "ImagePositionPatient", 3)
    return np.array(numbers) if numbers else None


def _read_dataset(fp) -> Dataset:
    """The header up to the pixel data; files without a preamble are accepted if they look like
    DICOM (they start with a group 0002 or 0008 tag)."""
    try:
        return dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError:
        fp.seek(0)
        if fp.read(2) not in (b"\x02\x00", b"\x08\x00"):
            raise _SkipFileError("not a DICOM file") from None
        fp.seek(0)
        return dcmread(fp, stop_before_pixels=True, force=True)


def _syntax_of(ds: Dataset) -> UID:
    syntax = _text(getattr(ds, "file_meta", None), "TransferSyntaxUID")
    if syntax:
        return UID(syntax)
    implicit, little = ds.original_encoding
    if implicit is not False:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def _locate_pixels(fp, ds: Dataset, size: int, expected: int) -> int | None:
    """Offset of the Pixel Data value when it can be read directly; rejects files without
    pixels or whose pixels are cut short. ``fp`` stands where pydicom stopped."""
    syntax = _syntax_of(ds)
    if syntax == DeflatedExplicitVRLittleEndian:
        return None
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        raise _SkipFileError(_no_pixels_reason(ds))
    endian = ">" if syntax == ExplicitVRBigEndian else "<"
    tag = struct.unpack(f"{endian}HH", head[:4])
    if tag in _FLOAT_PIXEL_DATA:
        raise _SkipFileError("floating-point pixel data is not supported")
    if tag != _PIXEL_DATA:
        raise _SkipFileError("DICOM file without image data")
    if syntax == ImplicitVRLittleEndian:
        length, value_at = struct.unpack("<I", head[4:8])[0], start + 8
    else:
        length, value_at = struct.unpack(f"{endian}I", head[8:12])[0], start + 12
    if length == _UNDEFINED_LENGTH:
        return None
    if value_at + min(length, expected) > size:
        raise _SkipFileError("truncated: the file ends inside its pixel data")
    if length < expected:
        raise _SkipFileError("its pixel data is shorter than the image it describes")
    return value_at if syntax in _NATIVE_SYNTAXES else None


def _functional(groups: Any, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` inside a functional-groups item (or sequence), if any."""
    if not groups:
        return None
    item = groups if isinstance(groups, Dataset) else groups[0]
    seq = item.get(sequence)
    return seq[0] if seq else None


def _frame_group(ds: Dataset, frame: Dataset | None, sequence: str) -> Dataset | None:
    """A functional group for one frame: its own, else the shared one."""
    own = _functional(frame, sequence)
    if own is not None:
        return own
    return _functional(ds.get("SharedFunctionalGroupsSequence"), sequence)


def _window(ds: Dataset) -> tuple[float | None, float | None]:
    source: Dataset | None = ds
    if "WindowCenter" not in ds:
        first = ds.get("PerFrameFunctionalGroupsSequence")
        source = _frame_group(ds, first[0] if first else None, "FrameVOILUTSequence")
    return _float(source, "WindowCenter"), _float(source, "WindowWidth")


def _series_fields(ds: Dataset) -> dict[str, Any]:
    """The de-identified series fields a Volume may carry (see SAFE_METADATA_KEYS)."""
    modality = _text(ds, "Modality") or "OT"
    center, width = _window(ds)
    measures = _frame_group(ds, None, "PixelMeasuresSequence")
    units = {"CT": "HU", "RTDOSE": _text(ds, "DoseUnits"), "PT": _text(ds, "Units")}.get(modality)
    fields = {
        "series_description": str(ds.get("SeriesDescription") or ""),
        "series_number": _int(ds, "SeriesNumber") if _strings(ds, "SeriesNumber") else None,
        "modality": modality,
        "body_part": _text(ds, "BodyPartExamined") or None,
        "window_center": center,
        "window_width": width,
        "manufacturer": str(ds.get("Manufacturer") or "") or None,
        "slice_thickness": _float(ds, "SliceThickness") or _float(measures, "SliceThickness"),
        "units": units or None,
        "magnetic_field_strength": (
            _float(ds, "MagneticFieldStrength") if modality == "MR" else None
        ),
        "source_format": "DICOM",
    }
    return {k: v for k, v in fields.items() if v is not None}


def _frame_pointers(ds: Dataset) -> set[int]:
    """The tags a multi-frame image steps through from frame to frame."""
    if _tag("NumberOfFrames") not in ds or "FrameIncrementPointer" not in ds:
        return set()
    pointer = ds.FrameIncrementPointer
    return (
        {int(p) for p in pointer}
        if isinstance(pointer, list | tuple | MultiValue)
        else {int(pointer)}
    )


def _new_file(path: Path, ds: Dataset, syntax: UID, known: dict[tuple, dict]) -> _File:
    series_uid = _text(ds, "SeriesInstanceUID")
    series = (series_uid, _text(ds, "SeriesNumber"))
    if series not in known:
        known[series] = _series_fields(ds)
    bits_allocated = _ushort(ds, "BitsAllocated", 16)
    return _File(
        path=path,
        syntax=syntax,
        series_uid=series_uid,
        instance_uid=_text(ds, "SOPInstanceUID"),
        fields=known[series],
        image_type=tuple(_strings(ds, "ImageType")),
        rows=_ushort(ds, "Rows", 0),
        cols=_ushort(ds, "Columns", 0),
        samples=_ushort(ds, "SamplesPerPixel", 1),
        bits_allocated=bits_allocated,
        bits_stored=_ushort(ds, "BitsStored", bits_allocated),
        signed=_ushort(ds, "PixelRepresentation", 0) == 1,
        n_frames=max(1, _int(ds, "NumberOfFrames", 1)),
        time_frames=bool(_frame_pointers(ds) & _FRAME_TIME_POINTERS),
    )


def _no_pixels_reason(ds: Dataset) -> str:
    """Why a file holds no pixels: an image object cut short, or not an image at all."""
    sop_class = _text(ds, "SOPClassUID") or _text(
        getattr(ds, "file_meta", None), "MediaStorageSOPClassUID"
    )
    if "Image Storage" in UID(sop_class).name:
        return "truncated: the file ends before its pixel data"
    return "DICOM file without image data"


def _rescale(item: Dataset | None, ds: Dataset) -> tuple[float, float]:
    slope = _float(item, "RescaleSlope") or 1.0
    intercept = _float(item, "RescaleIntercept") or 0.0
    if _text(ds, "Modality") == "RTDOSE":
        slope *= _float(ds, "DoseGridScaling") or 1.0
    return slope, intercept


def _order(ds: Dataset, path: Path, index: int = 0) -> tuple:
    """Tie-break for frames at one position (time points, echoes); never used to place slices."""
    return (
        _int(ds, "TemporalPositionIdentifier"),
        _int(ds, "EchoNumbers"),
        _int(ds, "AcquisitionNumber"),
        _int(ds, "InstanceNumber"),
        path.name,
        index,
    )
