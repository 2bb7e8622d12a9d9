"""Header fields read once per file with ``stop_before_pixels``, cheaply, without patient data."""

from __future__ import annotations

import functools
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
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
_SPLIT_SERIES_OFFSET = 1000  # dcm2niix's series number for volumes split off a series
_TEXT_VRS = frozenset(
    "AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split()  # noqa: SIM905
)
# struct codes of the binary value representations (a raw value of these VRs is not text)
_BINARY_VRS = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "UV": "Q",
    "SV": "q",
}


@functools.cache
def _tag(keyword: str) -> BaseTag:
    return Tag(keyword)


def _raw_vr(elem: Any) -> str:
    """The VR of a (possibly raw, implicit-VR) element; ambiguous ones ("US or SS") as the first."""
    vr = getattr(elem, "VR", None)
    if not vr or vr == "UN":
        try:
            vr = dictionary_VR(elem.tag)
        except KeyError:
            return "UN"
    return str(vr)[:2]


def _binary(ds: Dataset, elem: Any, value: bytes) -> list[str] | None:
    """A binary-VR raw value (US, UL, FL, ...) decoded with the dataset's byte order."""
    code = _BINARY_VRS.get(_raw_vr(elem))
    if code is None:
        return None
    size = struct.calcsize(code)
    count = len(value) // size
    little = getattr(ds, "original_encoding", (None, None))[1] is not False
    numbers = struct.unpack(f"{'<' if little else '>'}{count}{code}", value[: count * size])
    return [repr(n) for n in numbers]


def _strings(ds: Dataset | None, keyword: str) -> list[str]:
    """An element's values as strings, split (or, for binary VRs, decoded) from the raw bytes.

    pydicom converts a value in ~30 us, which dominates reading hundreds of slice headers;
    string-valued elements (CS, DS, IS, UI) are cheap to split directly.
    """
    elem = ds.get_item(_tag(keyword)) if ds is not None else None
    value = elem.value if elem is not None else None
    if value is None:
        return []
    if isinstance(value, bytes):
        # text VRs, the common case, go straight to splitting: no dictionary lookup
        numbers = None if getattr(elem, "VR", None) in _TEXT_VRS else _binary(ds, elem, value)
        if numbers is not None:
            return numbers
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
    return int(number) if number is not None and math.isfinite(number) else default


def _ushort(ds: Dataset, keyword: str, default: int) -> int:
    """A US element (Rows, BitsAllocated, ...), decoded from its raw bytes."""
    elem = ds.get_item(_tag(keyword))
    value = elem.value if elem is not None else None
    if isinstance(value, bytes) and len(value) == 2:  # the common case, kept fast
        little = ds.original_encoding[1] is not False
        return struct.unpack("<H" if little else ">H", value)[0]
    number = _float(ds, keyword)
    return int(number) if number is not None and math.isfinite(number) else default


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


def _locate_pixels(fp, ds: Dataset, size: int, file: _File) -> int | None:
    """Offset of the Pixel Data value when it can be read directly; rejects files without
    pixels or whose pixels are cut short. ``fp`` stands where pydicom stopped."""
    syntax = file.syntax
    if syntax == DeflatedExplicitVRLittleEndian:
        return None
    expected = file.frame_bytes * file.n_frames
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
    if length == _UNDEFINED_LENGTH:  # encapsulated: at least one 8-byte item per frame
        if size - value_at < 8 * file.n_frames:
            raise _SkipFileError(
                f"it declares {file.n_frames} frames but its compressed pixel data holds "
                f"only {max(0, size - value_at)} bytes"
            )
        return None
    if value_at + min(length, expected) > size:
        raise _SkipFileError("truncated: the file ends inside its pixel data")
    if length < expected:
        raise _SkipFileError("its pixel data is shorter than the image it describes")
    if syntax == ExplicitVRBigEndian and file.bits_allocated == 8 and head[4:6] == b"OW":
        if file.frame_bytes % 2:  # words straddle frames: left to pydicom
            return None
        file.swap_pairs = True
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


def _new_file(
    path: Path, ds: Dataset, syntax: UID, known: dict[tuple, dict], *, split: bool = False
) -> _File:
    """The file's record; ``split``: a volume given its own series number + 1000 (GE pepolar)."""
    series_uid = _text(ds, "SeriesInstanceUID")
    series = (series_uid, _text(ds, "SeriesNumber"), split)
    if series not in known:
        known[series] = _series_fields(ds)
        if split:
            number = known[series].get("series_number") or 0
            known[series]["series_number"] = number + _SPLIT_SERIES_OFFSET
    bits_allocated = _ushort(ds, "BitsAllocated", 16)
    echo = _int(ds, "EchoNumbers")
    enhanced = _tag("PerFrameFunctionalGroupsSequence") in ds
    return _File(
        path=path,
        syntax=syntax,
        series_uid=series_uid,
        instance_uid=_text(ds, "SOPInstanceUID"),
        instance=_int(ds, "InstanceNumber"),
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
        # echoes after the first are stacks of their own (one volume per echo, as dcm2niix);
        # an enhanced file's echoes are told apart by their frame types
        variant=(f"echo {echo}",) if echo > 1 and not enhanced else (),
        order=(
            _int(ds, "TemporalPositionIdentifier"),
            echo,
            _int(ds, "AcquisitionNumber"),
            _acquisition_time(ds),
        ),
    )


def _no_pixels_reason(ds: Dataset) -> str:
    """Why a file holds no pixels: an image object cut short, or not an image at all."""
    sop_class = _text(ds, "SOPClassUID") or _text(
        getattr(ds, "file_meta", None), "MediaStorageSOPClassUID"
    )
    if "Image Storage" in UID(sop_class).name:
        return "truncated: the file ends before its pixel data"
    return "DICOM file without image data"


def _rescale(item: Dataset | None, file: _File) -> tuple[float, float]:
    """Slope and intercept as recorded (a slope of 0 stays 0: the frame check refuses it)."""
    slope = _float(item, "RescaleSlope", 1.0) * file.scale
    return slope, _float(item, "RescaleIntercept", 0.0)


def _slope_scale(ds: Dataset, modality: str) -> float:
    """What multiplies every slope of a file: an RT dose's DoseGridScaling, else 1."""
    return _float(ds, "DoseGridScaling", 1.0) if modality == "RTDOSE" else 1.0


def _first_text(ds: Dataset | None, *keywords: str) -> str:
    """The first non-empty text among ``keywords``; absent elements are skipped unread."""
    if ds is None:
        return ""
    for keyword in keywords:
        if _tag(keyword) in ds:
            text = _text(ds, keyword)
            if text:
                return text
    return ""


def _acquisition_time(ds: Dataset | None) -> float:
    """When a frame was acquired, as YYYYMMDDHHMMSS.ffffff (0 when the file does not say)."""
    stamp = _first_text(ds, "FrameAcquisitionDateTime", "AcquisitionDateTime")
    if not stamp:
        time = _first_text(ds, "AcquisitionTime", "ContentTime")
        stamp = f"{_first_text(ds, 'AcquisitionDate', 'ContentDate') or '0'}{time}"
    try:
        number = float(stamp.split("+")[0].split("-")[0])
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _order(file: _File, index: int = 0, *, temporal: int | None = None, when: float = 0.0) -> tuple:
    """Acquisition order of frames at one position (time points, echoes), then deterministic
    tie-breaks (instance number, instance UID); never the file name. Not used to place slices.
    A frame's own temporal index and time, where it has them, replace the file's."""
    file_temporal, echo, acquisition, file_when = file.order
    return (
        file_temporal if temporal is None else temporal,
        echo,
        acquisition,
        when or file_when,
        file.instance,
        file.instance_uid,
        index,
    )
