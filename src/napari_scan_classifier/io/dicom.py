"""DICOM series: discovery, geometry and decoding into :class:`Volume`s (pydicom >= 3).

Headers are read once with ``stop_before_pixels``; slices are grouped into stacks (series UID,
then orientation, pixel grid and image type, so a localizer never joins the axial slices), placed
by their position projected on the slice normal, and decoded concurrently straight into one
preallocated array. Uncompressed pixel data is read from the file directly; everything else goes
through pydicom's decoders (pylibjpeg, pyjpegls).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import iter_pixels
from pydicom.pixels.decoders.base import get_decoder
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from napari_scan_classifier.errors import (
    CancelledError,
    UnreadableScanError,
    UnsupportedTransferSyntaxError,
)
from napari_scan_classifier.io import LoadResult, SkippedFile
from napari_scan_classifier.volume import Volume, lps_to_world

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]

_NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
_PIXEL_DATA = (0x7FE0, 0x0010)
_FLOAT_PIXEL_DATA = {(0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_NOT_IMAGES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "RTPLAN", "REG", "RWV"}
_FRAME_TIME_POINTERS = {0x00181063, 0x00181065}  # Frame Time, Frame Time Vector
_DEFAULT_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# Positions closer than this (mm) are the same slice; a stack is regular when every slice lies
# within max(_GRID_ABS_TOL, _GRID_REL_TOL * step) of a regular grid.
_DUPLICATE_TOL = 0.01
_GRID_ABS_TOL = 0.005
_GRID_REL_TOL = 0.02


def _decoder_packages(syntax: UID) -> str:
    """What to ``pip install`` for a compressed transfer syntax."""
    if syntax in JPEGLSTransferSyntaxes:
        return "pyjpegls"
    if syntax in JPEGTransferSyntaxes:
        return "pylibjpeg pylibjpeg-libjpeg"
    if syntax == RLELossless:
        return "pylibjpeg pylibjpeg-rle"
    return "pylibjpeg pylibjpeg-openjpeg"


@dataclass(frozen=True)
class SeriesInfo:
    """One series (or one stack of a split series) as found in the headers, without patient data.

    ``key`` is a de-identified, stable id to pass to ``load_dicom(path, series=[key])``.
    """

    key: str
    series_number: int | None
    description: str
    modality: str
    shape: tuple[int, int, int]
    n_frames: int
    timepoints: int
    image_type: tuple[str, ...]
    orientation: str
    transfer_syntax: str


class _SkipFileError(Exception):
    """A file that cannot be used; the message is the reason shown to the user."""


class _OverflowError(Exception):
    """Rescaled values do not fit the chosen integer type; decode again with a wider one."""


@dataclass(eq=False)
class _File:
    """What the loader needs from one file's header (no patient fields)."""

    path: Path
    syntax: UID
    series_uid: str
    instance_uid: str
    fields: dict[str, Any]
    image_type: tuple[str, ...]
    rows: int
    cols: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    n_frames: int
    pixel_offset: int | None = None
    mosaic: tuple[int, int, int] | None = None  # tile rows, tile columns, tiles per mosaic row
    time_frames: bool = False

    @property
    def stored_dtype(self) -> np.dtype:
        size = max(1, self.bits_allocated // 8)
        return np.dtype(
            f"{'>' if self.syntax == ExplicitVRBigEndian else '<'}"
            f"{'i' if self.signed else 'u'}{size}"
        )

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.samples * self.bits_allocated // 8


@dataclass(eq=False)
class _Frame:
    """One 2D image: a single-frame file, a frame of a multi-frame file, or a mosaic tile."""

    file: _File
    index: int
    rows: int
    cols: int
    position: np.ndarray | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    slope: float = 1.0
    intercept: float = 0.0
    kind: tuple[str, ...] = ()
    order: tuple = ()


@dataclass
class _Stack:
    key: str
    frames: list[_Frame]

    @property
    def files(self) -> list[_File]:
        return list(dict.fromkeys(frame.file for frame in self.frames))


@dataclass
class _Plan:
    """Where each decoded frame goes: ``layers[t][u]`` is the u-th position of time point t,
    ``weights[z]`` the (u, weight) pairs that make output slice z."""

    layers: list[list[_Frame]]
    weights: list[list[tuple[int, float]]]
    mode: str  # "exact", "fill" (missing slices interpolated) or "resample" (uneven gaps)
    affine_lps: np.ndarray
    warnings: list[str] = field(default_factory=list)
    frame_axis: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.layers[0][0]
        spatial = (len(self.weights), first.rows, first.cols)
        return (len(self.layers), *spatial) if len(self.layers) > 1 else spatial


# ----------------------------------------------------------------------------- header reading


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


def _read_file(path: Path, known: dict[tuple, dict]) -> list[_Frame]:
    """The frames one file contributes; raises _SkipFileError with the reason it is unusable.

    ``known`` caches series-level fields by series UID and number: read once per series.
    """
    try:
        with open(path, "rb") as fp:
            ds = _read_dataset(fp)
            if _tag("Rows") not in ds or _tag("Columns") not in ds:
                raise _SkipFileError(_no_pixels_reason(ds))
            modality = _text(ds, "Modality")
            if modality in _NOT_IMAGES:
                raise _SkipFileError(f"a {modality} object, not an image")
            syntax = _syntax_of(ds)
            file = _new_file(path, ds, syntax, known)
            if file.samples != 1:
                raise _SkipFileError("colour (RGB) images are not supported as scans")
            size = os.fstat(fp.fileno()).st_size
            offset = _locate_pixels(fp, ds, size, file.frame_bytes * file.n_frames)
            file.pixel_offset = offset if file.bits_allocated in (8, 16, 32) else None
            return _frames_of(ds, file)
    except _SkipFileError:
        raise
    except OSError as exc:
        raise _SkipFileError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:
        reason = f"unreadable or truncated DICOM header ({type(exc).__name__})"
        raise _SkipFileError(reason) from None


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


def _frames_of(ds: Dataset, file: _File) -> list[_Frame]:
    if _tag("PerFrameFunctionalGroupsSequence") in ds:
        return _enhanced_frames(ds, file)
    if "MOSAIC" in file.image_type and file.n_frames == 1:
        return _mosaic_frames(ds, file)
    if file.n_frames > 1:
        return _legacy_frames(ds, file)
    slope, intercept = _rescale(ds, ds)
    return [
        _Frame(
            file,
            0,
            file.rows,
            file.cols,
            position=_position(ds),
            orientation=_floats(ds, "ImageOrientationPatient", 6),
            pixel_spacing=_floats(ds, "PixelSpacing", 2),
            thickness=_float(ds, "SpacingBetweenSlices") or _float(ds, "SliceThickness"),
            slope=slope,
            intercept=intercept,
            order=_order(ds, file.path),
        )
    ]


def _enhanced_frames(ds: Dataset, file: _File) -> list[_Frame]:
    """Frames of an enhanced multi-frame image, from its functional groups."""
    frames = []
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for index in range(file.n_frames):
        item = per_frame[index] if index < len(per_frame) else None
        measures = _frame_group(ds, item, "PixelMeasuresSequence")
        content = _frame_group(ds, item, "FrameContentSequence")
        kind = next(
            (
                _strings(g, "FrameType")
                for g in (
                    _frame_group(ds, item, seq)
                    for seq in (
                        "MRImageFrameTypeSequence",
                        "CTImageFrameTypeSequence",
                        "PETFrameTypeSequence",
                    )
                )
                if g is not None
            ),
            [],
        )
        slope, intercept = _rescale(_frame_group(ds, item, "PixelValueTransformationSequence"), ds)
        frames.append(
            _Frame(
                file,
                index,
                file.rows,
                file.cols,
                position=_position(_frame_group(ds, item, "PlanePositionSequence")),
                orientation=_floats(
                    _frame_group(ds, item, "PlaneOrientationSequence"), "ImageOrientationPatient", 6
                ),
                pixel_spacing=_floats(measures, "PixelSpacing", 2),
                thickness=_float(measures, "SpacingBetweenSlices")
                or _float(ds, "SpacingBetweenSlices")
                or _float(measures, "SliceThickness"),
                slope=slope,
                intercept=intercept,
                kind=tuple(kind),
                order=(_int(content, "TemporalPositionIndex"), 0, 0, 0, "", index),
            )
        )
    return frames


def _legacy_frames(ds: Dataset, file: _File) -> list[_Frame]:
    """Frames of a classic multi-frame image (RT dose, NM, cine): one IPP for the whole file,
    frames stepping along the normal by GridFrameOffsetVector or the slice spacing."""
    origin = _position(ds)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    spacing = _float(ds, "SpacingBetweenSlices") or _float(ds, "SliceThickness")
    offsets = _floats(ds, "GridFrameOffsetVector", file.n_frames)
    positions: list[np.ndarray | None] = [None] * file.n_frames
    if origin is not None and not file.time_frames:
        normal = np.cross(*np.reshape(iop or _DEFAULT_IOP, (2, 3)))
        if offsets is not None:
            positions = [origin + (s - offsets[0]) * normal for s in offsets]
        elif spacing:
            positions = [origin + k * spacing * normal for k in range(file.n_frames)]
    slope, intercept = _rescale(ds, ds)
    return [
        _Frame(
            file,
            k,
            file.rows,
            file.cols,
            position=positions[k],
            orientation=iop,
            pixel_spacing=_floats(ds, "PixelSpacing", 2),
            thickness=spacing,
            slope=slope,
            intercept=intercept,
            order=(0, 0, 0, 0, "", k),
        )
        for k in range(file.n_frames)
    ]


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


# ----------------------------------------------------------------------------- discovery


def _candidate_files(path: Path) -> list[Path]:
    """Every file under ``path`` in a stable order. Hidden files and folders are left out, and
    so is a DICOMDIR index (choosing one means: the media it indexes, i.e. its folder)."""
    if path.is_file() and path.name.upper() != "DICOMDIR":
        return [path]
    found = []
    for root, dirs, names in os.walk(path.parent if path.is_file() else path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(root) / n
            for n in sorted(names)
            if not n.startswith(".") and n.upper() != "DICOMDIR"
        )
    return found


def _try_file(
    path: Path, known: dict[tuple, dict], cancel: Cancel | None
) -> list[_Frame] | SkippedFile:
    if cancel is not None and cancel():
        raise CancelledError("loading was cancelled")
    try:
        return _read_file(path, known)
    except _SkipFileError as skip:
        return SkippedFile(path, str(skip))


def _series_key(frame: _Frame) -> str:
    """A de-identified id for a stack (a hash, so no UID leaves this module)."""
    f = frame.file
    parts = [
        f.series_uid,
        str(f.fields.get("series_number")),
        "\\".join(f.image_type),
        "\\".join(frame.kind),
        f"{frame.rows}x{frame.cols}",
        str(f.time_frames),
        str(frame.position is None),
    ]
    parts += [f"{v:.3f}" for v in frame.orientation or ()]
    parts += [f"{v:.4f}" for v in frame.pixel_spacing or ()]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _same_stack(a: _Frame, b: _Frame) -> bool:
    def close(x, y, tol):
        return (x is None) == (y is None) and (x is None or np.allclose(x, y, rtol=0, atol=tol))

    return close(a.orientation, b.orientation, 1e-3) and close(
        a.pixel_spacing, b.pixel_spacing, 1e-4
    )


def _group(frames: Iterable[_Frame]) -> list[_Stack]:
    """Split into stacks: series UID, image/frame type and grid, then orientation and spacing."""
    buckets: dict[tuple, list[list[_Frame]]] = {}
    for frame in frames:
        f = frame.file
        base = (
            f.series_uid,
            f.fields.get("series_number"),
            f.image_type,
            frame.kind,
            frame.rows,
            frame.cols,
            f.time_frames,
            frame.position is None,
        )
        clusters = buckets.setdefault(base, [])
        for cluster in clusters:
            if _same_stack(cluster[0], frame):
                cluster.append(frame)
                break
        else:
            clusters.append([frame])
    stacks = [_Stack(_series_key(c[0]), c) for cs in buckets.values() for c in cs]
    return sorted(stacks, key=_stack_sort_key)


def _stack_sort_key(stack: _Stack) -> tuple:
    fields = stack.frames[0].file.fields
    number = fields.get("series_number")
    return (number is None, number or 0, fields.get("series_description", ""), stack.key)


def _scan(
    path: Path,
    pool: Executor,
    progress: Progress | None,
    cancel: Cancel | None,
    files: Iterable[Path] | None = None,
) -> tuple[list[_Stack], list[SkippedFile]]:
    """Read every header under ``path`` (only ``files`` where given); the stacks found and the
    files left out."""
    if not path.exists():
        raise UnreadableScanError(f"{path.name}: no such file or folder")
    candidates = _candidate_files(path) if files is None else [Path(f) for f in files]
    frames: list[_Frame] = []
    skipped: list[SkippedFile] = []
    known: dict[tuple, dict] = {}
    seen: dict[str, Path] = {}
    results = pool.map(lambda p: _try_file(p, known, cancel), candidates)
    for done, (candidate, result) in enumerate(zip(candidates, results, strict=True), 1):
        uid = result[0].file.instance_uid if isinstance(result, list) and result else ""
        if isinstance(result, SkippedFile):
            skipped.append(result)
        elif uid and uid in seen:
            reason = f"a copy of {seen[uid].name} (same instance UID)"
            skipped.append(SkippedFile(candidate, reason))
        else:
            seen.setdefault(uid, candidate)
            frames.extend(result)
        if progress is not None:
            progress(done, len(candidates), "Reading DICOM headers")
    if not frames:
        if path.is_file() and len(candidates) == 1 and skipped:
            raise UnreadableScanError(f"{path.name}: {skipped[0].reason}")
        raise UnreadableScanError(
            f"{path.name}: no DICOM images found in this folder ({len(candidates)} files checked)"
        )
    return _group(frames), skipped


# ----------------------------------------------------------------------------- geometry


def _cosines(frame: _Frame, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    iop = frame.orientation
    if iop is None:
        notes.append("no image orientation in the files: axial orientation assumed")
        iop = _DEFAULT_IOP
    row_cos, col_cos = np.array(iop[:3]), np.array(iop[3:])
    return row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos)


def _positions(frames: list[_Frame], normal: np.ndarray, notes: list[str]) -> np.ndarray:
    """Each frame's IPP; made up (in file/frame order) when the files carry none."""
    if all(f.position is not None for f in frames):
        return np.array([f.position for f in frames])
    frames.sort(key=lambda f: f.order)
    step = frames[0].thickness or 1.0
    origin = next((f.position for f in frames if f.position is not None), np.zeros(3))
    if not frames[0].file.time_frames and len(frames) > 1:
        notes.append(
            f"no slice positions in the files: slices kept in file order, {step:g} mm apart"
        )
    return np.array([origin + k * step * normal for k in range(len(frames))])


def _position_groups(frames: list[_Frame], depth: np.ndarray, notes: list[str]) -> list[list[int]]:
    """Frame indices sorted along the normal, one list per distinct position (time points or
    echoes at one position share a list, in acquisition order)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(frames)), key=lambda i: (depth[i], frames[i].order)):
        if groups and depth[i] - depth[groups[-1][0]] <= _DUPLICATE_TOL:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups:
        group.sort(key=lambda i: frames[i].order)
    if len({len(g) for g in groups}) > 1:
        times = min(len(g) for g in groups)
        extra = sum(len(g) - times for g in groups)
        at = next(depth[g[0]] for g in groups if len(g) > times)
        notes.append(
            f"{extra} repeated slice(s) at one position left out (first at {at:.2f} mm "
            "along the slice normal)"
        )
    return groups


def _grid(depth: np.ndarray) -> tuple[np.ndarray, bool]:
    """Regularly spaced output depths from the first to the last slice, and whether every input
    slice lies on one of them (no resampling needed, at most missing slices to fill).

    The grid is never finer than the smallest gap, and never more than a few times denser than
    the input, so a stray slice cannot blow a stack up to thousands of interpolated slices.
    """
    if len(depth) == 1:
        return depth.copy(), True
    span = depth[-1] - depth[0]
    gaps = np.diff(depth)
    for gap in (gaps.min(), np.median(gaps)):
        count = max(1, round(span / gap))
        step = span / count
        offset = (depth - depth[0]) / step
        tol = max(_GRID_ABS_TOL, _GRID_REL_TOL * step)
        on_grid = np.all(np.abs(offset - np.rint(offset)) * step <= tol)
        if on_grid and count < 2 * len(depth) + 8:
            return depth[0] + step * np.arange(count + 1), True
    count = min(math.ceil(span / gaps.min() - 0.05), 4 * len(depth))
    return depth[0] + (span / count) * np.arange(count + 1), False


def _weights(depth: np.ndarray, targets: np.ndarray) -> list[list[tuple[int, float]]]:
    """Linear interpolation weights along the stack: (input index, weight) per output slice."""
    if len(depth) == 1:
        return [[(0, 1.0)]]
    step = (targets[-1] - targets[0]) / max(1, len(targets) - 1)
    tol = max(_GRID_ABS_TOL, _GRID_REL_TOL * step)
    lower = np.clip(np.searchsorted(depth, targets, side="right") - 1, 0, len(depth) - 2)
    weights = []
    for target, a in zip(targets, lower, strict=True):
        a = int(a)
        if abs(target - depth[a]) <= tol:
            weights.append([(a, 1.0)])
        elif abs(target - depth[a + 1]) <= tol:
            weights.append([(a + 1, 1.0)])
        else:
            w = float((target - depth[a]) / (depth[a + 1] - depth[a]))
            weights.append([(a, 1.0 - w), (a + 1, w)])
    return weights


def _gap_notes(depth: np.ndarray, targets: np.ndarray, weights: list, regular: bool) -> list[str]:
    if regular:
        notes = []
        z = 0
        while z < len(weights):
            if len(weights[z]) == 1:
                z += 1
                continue
            end = z
            while end + 1 < len(weights) and len(weights[end + 1]) == 2:
                end += 1
            a = weights[z][0][0]
            notes.append(
                f"{end - z + 1} slice(s) missing between {depth[a]:.2f} mm and "
                f"{depth[a + 1]:.2f} mm along the slice normal (after input slice {a} of "
                f"{len(depth)}); output slice(s) {z}-{end} filled by linear interpolation "
                "between the neighbouring slices"
            )
            z = end + 1
        return notes
    gaps = np.diff(depth)
    widest = int(np.argmax(gaps))
    step = (targets[-1] - targets[0]) / (len(targets) - 1)
    return [
        f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (widest between "
        f"input slices {widest} and {widest + 1}, at {depth[widest]:.2f}-{depth[widest + 1]:.2f} "
        f"mm along the slice normal); resampled onto a regular grid of {len(targets)} slices "
        f"{step:.3f} mm apart by linear interpolation between neighbouring slices"
    ]


def _line_notes(
    points: np.ndarray, depth: np.ndarray, normal: np.ndarray, step: np.ndarray
) -> list[str]:
    """Say when slices are sheared (gantry tilt) or do not lie on one straight line.

    Both only warn: the affine keeps the shear either way. Drifts under 0.05 mm over the whole
    stack are rounding in the headers, not tilt.
    """
    notes = []
    span = depth[-1] - depth[0]
    expected = points[0] + np.outer((depth - depth[0]) / span, points[-1] - points[0])
    off_line = float(np.max(np.linalg.norm(points - expected, axis=1)))
    if off_line > 0.1:
        notes.append(
            f"slice positions are not on one straight line (up to {off_line:.2f} mm off); "
            "slices placed on the line through the first and the last"
        )
    along = float(step @ normal)
    drift = points[-1] - points[0]
    shear = float(np.linalg.norm(drift - (drift @ normal) * normal))
    if shear > 0.05:
        angle = math.degrees(math.atan2(np.linalg.norm(step - along * normal), abs(along)))
        notes.append(
            f"slices are sheared by {angle:.2f} degrees (gantry tilt): the affine is "
            "sheared so every pixel keeps its scanner position"
        )
    return notes


def _spatial_layout(frames: list[_Frame], normal: np.ndarray, notes: list[str]) -> tuple:
    """Layers, interpolation weights, slice step, origin and mode of a stack of slices."""
    points = _positions(frames, normal, notes)
    all_depths = points @ normal
    groups = _position_groups(frames, all_depths, notes)
    times = min(len(g) for g in groups)
    layers = [[frames[g[t]] for g in groups] for t in range(times)]
    lead = [g[0] for g in groups]
    depth, points = all_depths[lead], points[lead]
    targets, regular = _grid(depth)
    weights = _weights(depth, targets)
    if len(depth) == 1:
        first = frames[0]
        return layers, weights, normal * (first.thickness or 1.0), points[0], "exact"
    step = (points[-1] - points[0]) / (len(targets) - 1)
    notes += _gap_notes(depth, targets, weights, regular)
    notes += _line_notes(points, depth, normal, step)
    exact = len(targets) == len(depth) and all(len(w) == 1 for w in weights)
    mode = "exact" if exact else ("fill" if regular else "resample")
    return layers, weights, step, points[0], mode


def _plan(stack: _Stack) -> _Plan:
    """Order, spacing and affine of a stack, from headers only."""
    notes: list[str] = []
    frames = list(stack.frames)
    first = frames[0]
    row_cos, col_cos = _cosines(first, notes)
    normal = np.cross(row_cos, col_cos)
    spacing = first.pixel_spacing
    if spacing is None:
        notes.append("no pixel spacing in the files: 1 mm pixels assumed")
        spacing = (1.0, 1.0)
    if first.file.time_frames:  # cine: frames are time points of one plane, kept on axis 0
        frames.sort(key=lambda f: f.order)
        origin = first.position if first.position is not None else np.zeros(3)
        layers, step, mode = [frames], normal, "exact"
        weights = [[(k, 1.0)] for k in range(len(frames))]
    else:
        layers, weights, step, origin, mode = _spatial_layout(frames, normal, notes)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_cos * spacing[0]
    affine[:3, 2] = row_cos * spacing[1]
    affine[:3, 3] = origin
    frame_axis = "time" if first.file.time_frames or len(layers) > 1 else None
    return _Plan(layers, weights, mode, affine, notes, frame_axis)


# ----------------------------------------------------------------------------- decoding


def _value_range(frame: _Frame) -> tuple[float, float]:
    """The rescaled values a frame's stored bits can hold."""
    f = frame.file
    bits = min(f.bits_stored, f.bits_allocated)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if f.signed else (0, 2**bits - 1)
    ends = (low * frame.slope + frame.intercept, high * frame.slope + frame.intercept)
    return min(ends), max(ends)


def _output_dtype(frames: list[_Frame], widen: bool) -> tuple[np.dtype, bool]:
    """The voxel type and whether each slice must be checked for overflow.

    Stored values stay as they are when no rescale applies; integer rescales of 8/16-bit data
    give int16 (checked per slice when the header allows larger values, int32 after an
    overflow); anything else is float32.
    """
    if all(f.slope == 1 and f.intercept == 0 for f in frames):
        return np.result_type(*{f.file.stored_dtype.newbyteorder("=") for f in frames}), False
    integral = all(float(f.slope).is_integer() and float(f.intercept).is_integer() for f in frames)
    if not integral or max(f.file.bits_allocated for f in frames) > 16:
        return np.dtype(np.float32), False
    if widen:
        return np.dtype(np.int32), False
    ranges = np.array([_value_range(f) for f in frames])
    info = np.iinfo(np.int16)
    return np.dtype(np.int16), bool(ranges[:, 0].min() < info.min or ranges[:, 1].max() > info.max)


def _rescale_into(
    src: np.ndarray, dest: np.ndarray, slope: float, intercept: float, checked: bool
) -> None:
    """``dest[...] = src * slope + intercept`` in dest's type (src may share dest's memory)."""
    if dest.dtype.kind == "f":
        if slope != 1:
            np.multiply(src, slope, out=dest, casting="unsafe")
        elif not np.shares_memory(src, dest) or src.dtype != dest.dtype:
            np.copyto(dest, src, casting="unsafe")
        if intercept:
            dest += np.asarray(intercept, dest.dtype)
        return
    slope_i, intercept_i = int(slope), int(intercept)
    if checked and src.size:
        ends = (int(src.min()) * slope_i + intercept_i, int(src.max()) * slope_i + intercept_i)
        info = np.iinfo(dest.dtype)
        if min(ends) < info.min or max(ends) > info.max:
            raise _OverflowError
    if slope_i != 1:  # rare: widen so the product cannot wrap before the intercept
        src = src.astype(np.int64) * slope_i
    if intercept_i:  # a scalar of dest's type keeps the loop narrow (the range was checked)
        np.add(src, dest.dtype.type(intercept_i), out=dest, casting="unsafe")
    elif not np.shares_memory(src, dest) or src.dtype != dest.dtype:
        np.copyto(dest, src, casting="unsafe")


def _fix_stored(raw: np.ndarray, file: _File) -> np.ndarray:
    """Native-endian values with unused high bits cleared (or sign-extended), as pydicom does."""
    if raw.dtype.byteorder == ">":
        raw = raw.byteswap(inplace=True).view(raw.dtype.newbyteorder("="))
    shift = file.bits_allocated - file.bits_stored
    if 0 < shift < file.bits_allocated:
        np.left_shift(raw, shift, out=raw)
        np.right_shift(raw, shift, out=raw)
    return raw


_Item = tuple[int, np.ndarray, float, float]  # frame/tile index, destination, slope, intercept


def _read_native(file: _File, items: list[_Item], checked: bool) -> None:
    """Read uncompressed frames from the file straight into their destination slices."""
    stored = file.stored_dtype
    with open(file.path, "rb") as fp:
        for index, dest, slope, intercept in items:
            direct = dest.dtype.itemsize == stored.itemsize and dest.flags.c_contiguous
            raw = dest.view(stored) if direct else np.empty(dest.shape, stored)
            fp.seek(file.pixel_offset + index * file.frame_bytes)
            if fp.readinto(memoryview(raw).cast("B")) != file.frame_bytes:
                raise EOFError("the file ends inside its pixel data")
            _rescale_into(_fix_stored(raw, file), dest, slope, intercept, checked)


def _tile(image: np.ndarray, file: _File, index: int) -> np.ndarray:
    tile_rows, tile_cols, per_row = file.mosaic
    top, left = (index // per_row) * tile_rows, (index % per_row) * tile_cols
    return image[top : top + tile_rows, left : left + tile_cols]


def _read_images(file: _File, indices: list[int]) -> Iterator[np.ndarray]:
    """Whole frames, decoded by pydicom (or read directly when uncompressed)."""
    if file.pixel_offset is not None:
        for index in indices:
            image = np.empty((file.rows, file.cols), file.stored_dtype.newbyteorder("="))
            _read_native(file, [(index, image, 1.0, 0.0)], False)
            yield image
        return
    # pydicom reads deflated files only through a full dcmread, not from the raw file
    source = dcmread(file.path) if file.syntax == DeflatedExplicitVRLittleEndian else file.path
    yield from iter_pixels(source, indices=indices if file.n_frames > 1 else None)


def _decode_file(file: _File, items: list[_Item], checked: bool) -> None:
    if file.pixel_offset is not None and file.mosaic is None:
        _read_native(file, items, checked)
        return
    wanted = sorted({0 if file.mosaic else index for index, *_ in items})
    for frame_index, image in zip(wanted, _read_images(file, wanted), strict=True):
        for index, dest, slope, intercept in items:
            if file.mosaic:
                _rescale_into(_tile(image, file, index), dest, slope, intercept, checked)
            elif index == frame_index:
                _rescale_into(image, dest, slope, intercept, checked)


def _decode_job(
    file: _File, items: list[_Item], checked: bool, cancel: Cancel | None
) -> str | None:
    """Decode one file's frames; the reason it failed, or None."""
    if cancel is not None and cancel():
        raise CancelledError("loading was cancelled")
    try:
        _decode_file(file, items, checked)
    except (_OverflowError, CancelledError):
        raise
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    except Exception as exc:
        detail = str(exc).replace(str(file.path), file.path.name).splitlines()
        return (
            f"pixel data could not be decoded ({detail[0][:160] if detail else type(exc).__name__})"
        )
    return None


@dataclass
class _Decoder:
    """Runs the decoding of one stack on a shared thread pool."""

    pool: Executor
    chunk: int
    cancel: Cancel | None = None
    progress: Progress | None = None
    failures: dict[_File, str] = field(default_factory=dict)

    def run(self, jobs: dict[_File, list[_Item]], checked: bool) -> None:
        files = list(jobs)
        results = self.pool.map(lambda f: _decode_job(f, jobs[f], checked, self.cancel), files)
        for done, (file, failure) in enumerate(zip(files, results, strict=True), 1):
            if failure:
                self.failures[file] = failure
            if self.progress is not None:
                self.progress(done, len(files), "Reading DICOM slices")

    def direct(self, plan: _Plan, out: np.ndarray, checked: bool) -> None:
        """Decode every input slice into its output slice, then fill missing ones."""
        slot = {ws[0][0]: z for z, ws in enumerate(plan.weights) if len(ws) == 1}
        jobs: dict[_File, list[_Item]] = {}
        for t, layer in enumerate(plan.layers):
            for u, frame in enumerate(layer):
                item = (frame.index, out[t, slot[u]], frame.slope, frame.intercept)
                jobs.setdefault(frame.file, []).append(item)
        self.run(jobs, checked)
        for z, ws in enumerate(plan.weights):
            if len(ws) == 2:
                (a, wa), (b, wb) = ws
                mixed = wa * out[:, slot[a]].astype(np.float32) + wb * out[:, slot[b]]
                out[:, z] = np.rint(mixed) if out.dtype.kind in "iu" else mixed

    def resample(self, plan: _Plan, out: np.ndarray) -> None:
        """Interpolate an unevenly spaced stack onto the regular grid, decoding input slices in
        chunks and keeping only those still needed (never a second full copy)."""
        for t, layer in enumerate(plan.layers):
            cache: dict[int, np.ndarray] = {}
            z = 0
            for start in range(0, len(layer), self.chunk):
                chunk = range(start, min(len(layer), start + self.chunk))
                buffers = {u: np.empty(out.shape[2:], np.float32) for u in chunk}
                self.run(self._jobs(layer, buffers), False)
                cache.update(buffers)
                while z < len(plan.weights) and plan.weights[z][-1][0] < chunk.stop:
                    out[t, z] = sum(w * cache[u] for u, w in plan.weights[z])
                    z += 1
                keep = plan.weights[z][0][0] if z < len(plan.weights) else len(layer)
                cache = {u: a for u, a in cache.items() if u >= keep}

    @staticmethod
    def _jobs(layer: list[_Frame], buffers: dict[int, np.ndarray]) -> dict[_File, list[_Item]]:
        jobs: dict[_File, list[_Item]] = {}
        for u, buffer in buffers.items():
            frame = layer[u]
            item = (frame.index, buffer, frame.slope, frame.intercept)
            jobs.setdefault(frame.file, []).append(item)
        return jobs


def _undecodable(files: list[_File]) -> tuple[_File, str] | None:
    """The first file whose transfer syntax no installed decoder handles, and why."""
    for file in files:
        if file.pixel_offset is not None:
            continue
        try:
            decoder = get_decoder(file.syntax)
        except NotImplementedError:
            return file, (
                f"its pixel data uses the transfer syntax {file.syntax.name} "
                f"({file.syntax}), which pydicom cannot decode"
            )
        if not decoder.is_available:
            return file, (
                f"its pixel data is compressed as {file.syntax.name} ({file.syntax}) "
                f"and no decoder for it is installed; "
                f"pip install {_decoder_packages(file.syntax)}"
            )
    return None


# ----------------------------------------------------------------------------- public API


def _metadata(stack: _Stack, plan: _Plan) -> dict[str, Any]:
    file = plan.layers[0][0].file
    metadata = dict(file.fields)
    metadata["image_type"] = file.image_type
    metadata["transfer_syntax"] = str(file.syntax.name)
    metadata["series_key"] = stack.key
    metadata["geometry_warnings"] = list(plan.warnings)
    if plan.frame_axis:
        metadata["frame_axis"] = plan.frame_axis
    return metadata


def _decode_plan(plan: _Plan, frames: list[_Frame], widen: bool, decoder: _Decoder) -> np.ndarray:
    """Allocate the output once and decode into it ((t, z, y, x), t = 1 for a 3D stack)."""
    resample = plan.mode == "resample"
    dtype, checked = (np.dtype(np.float32), False) if resample else _output_dtype(frames, widen)
    out = np.empty((len(plan.layers), *plan.shape[-3:]), dtype)
    decoder.failures = {}
    if resample:
        decoder.resample(plan, out)
    else:
        decoder.direct(plan, out, checked)
    return out


def _decode_stack(stack: _Stack, decoder: _Decoder, skipped: list[SkippedFile]) -> Volume:
    """Decode one stack, leaving out files that fail (and re-planning without them)."""
    frames, widen = list(stack.frames), False
    while True:
        plan = _plan(_Stack(stack.key, frames))
        try:
            out = _decode_plan(plan, frames, widen, decoder)
        except _OverflowError:
            widen = True
            continue
        if not decoder.failures:
            break
        del out
        skipped.extend(SkippedFile(f.path, reason) for f, reason in decoder.failures.items())
        frames = [f for f in frames if f.file not in decoder.failures]
        if not frames:
            file, reason = next(iter(decoder.failures.items()))
            raise UnreadableScanError(f"{file.path.name}: {reason}")
    voxels = out[0] if len(plan.layers) == 1 else out
    modality = str(plan.layers[0][0].file.fields.get("modality", "OT"))
    return Volume(voxels, lps_to_world(plan.affine_lps), modality, _metadata(stack, plan))


def _orientation_name(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _info(stack: _Stack) -> SeriesInfo:
    plan = _plan(stack)
    file = stack.frames[0].file
    fields = file.fields
    return SeriesInfo(
        key=stack.key,
        series_number=fields.get("series_number"),
        description=fields.get("series_description", ""),
        modality=fields.get("modality", "OT"),
        shape=plan.shape[-3:],
        n_frames=len(stack.frames),
        timepoints=len(plan.layers) if len(plan.layers) > 1 else 1,
        image_type=file.image_type,
        orientation=_orientation_name(
            np.cross(*np.reshape(stack.frames[0].orientation or _DEFAULT_IOP, (2, 3)))
        ),
        transfer_syntax=str(file.syntax.name),
    )


def _workers(max_workers: int | None) -> int:
    return max_workers or min(16, 4 * (os.cpu_count() or 1))


def list_series(
    path: str | Path,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    max_workers: int | None = None,
) -> list[SeriesInfo]:
    """The series (stacks) under ``path`` from their headers only; no pixel data is read."""
    with ThreadPoolExecutor(_workers(max_workers)) as pool:
        stacks, _ = _scan(Path(path), pool, progress, cancel)
    return [_info(stack) for stack in stacks]


def series_files(
    path: str | Path,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    max_workers: int | None = None,
) -> tuple[dict[str, list[Path]], list[SkippedFile]]:
    """Each series key under ``path`` with the files that hold it, and the files left out, from
    the headers only: so one series can be loaded on its own elsewhere (another process or
    machine) with ``load_dicom(path, series=[key], files=...)`` without searching ``path``."""
    with ThreadPoolExecutor(_workers(max_workers)) as pool:
        stacks, skipped = _scan(Path(path), pool, progress, cancel)
    return {stack.key: [file.path for file in stack.files] for stack in stacks}, skipped


def load_dicom(
    path: str | Path,
    *,
    series: Iterable[str] | None = None,
    files: Iterable[str | Path] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    max_workers: int | None = None,
) -> LoadResult:
    """Load every DICOM series under ``path`` (a file or a folder, searched recursively).

    One Volume per series, split where orientation, pixel grid or image type changes.
    ``series`` restricts loading to keys from :func:`list_series`, ``files`` reads only these
    files instead of searching ``path`` (see :func:`series_files`). Files that cannot be used
    are reported in ``LoadResult.skipped``; if nothing loads, the first problem is raised.
    """
    path = Path(path)
    wanted = set(series) if series is not None else None
    volumes: list[Volume] = []
    errors: list[UnreadableScanError] = []
    workers = _workers(max_workers)
    with ThreadPoolExecutor(workers) as pool:
        stacks, skipped = _scan(
            path, pool, progress, cancel, None if files is None else map(Path, files)
        )
        decoder = _Decoder(pool, chunk=2 * workers, cancel=cancel, progress=progress)
        for stack in stacks:
            if wanted is not None and stack.key not in wanted:
                continue
            problem = _undecodable(stack.files)
            if problem is not None:
                file, reason = problem
                skipped.extend(SkippedFile(f.path, reason) for f in stack.files)
                errors.append(UnsupportedTransferSyntaxError(f"{file.path.name}: {reason}"))
                continue
            try:
                volumes.append(_decode_stack(stack, decoder, skipped))
            except UnreadableScanError as exc:
                errors.append(exc)
    if not volumes and errors:
        raise errors[0]
    return LoadResult(volumes, skipped)
