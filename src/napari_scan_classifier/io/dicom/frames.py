"""The frames one file contributes: single-frame, enhanced multi-frame, classic multi-frame."""

from __future__ import annotations

import math
import os
import struct
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset

from napari_scan_classifier.io.checks import (
    finite_positive,
    orientation_problem,
    position_problem,
    spacing_problem,
)
from napari_scan_classifier.io.dicom.headers import (
    _NOT_IMAGES,
    _acquisition_time,
    _float,
    _floats,
    _frame_group,
    _int,
    _locate_pixels,
    _new_file,
    _no_pixels_reason,
    _order,
    _position,
    _read_dataset,
    _rescale,
    _slope_scale,
    _strings,
    _syntax_of,
    _tag,
    _text,
    _ushort,
)
from napari_scan_classifier.io.dicom.luts import value_table
from napari_scan_classifier.io.dicom.mosaic import _mosaic_frames, _uih_grid_frames, _uih_tiles
from napari_scan_classifier.io.dicom.records import (
    _DEFAULT_IOP,
    _File,
    _Frame,
    _Gunzipped,
    _SkipFileError,
    _value_range,
)
from napari_scan_classifier.io.dicom.vendors import ge_reverse_phase

MAX_FRAMES_PER_FILE = 100_000  # a 4D enhanced fMRI file holds ~10^4; more is a damaged header
_BITS_ALLOCATED = (1, 8, 16, 32)
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_TRAILER_SIZE = 4  # the uncompressed size closes a gzip file
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103  # the smallest magnitude float32 rounds to infinity


def _unpacked_size(raw: BinaryIO) -> int:
    """A gzip file's uncompressed size, from its trailer (modulo 4 GiB, as gzip records it);
    0 for a file too short to have one. ``raw`` is left at its start, for gzip to read."""
    end = raw.seek(0, os.SEEK_END)
    size = 0
    if end >= _GZIP_TRAILER_SIZE:
        raw.seek(end - _GZIP_TRAILER_SIZE)
        size = struct.unpack("<I", raw.read(_GZIP_TRAILER_SIZE))[0]
    raw.seek(0)
    return size


def _read_file(path: Path, known: dict[tuple, dict]) -> list[_Frame]:
    """The frames one file contributes; raises _SkipFileError with the reason it is unusable.

    ``known`` caches series-level fields by series UID and number: read once per series.
    The file is opened once; a gzipped one (``.dcm.gz``) is told by its magic bytes.
    """
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            size = _unpacked_size(raw) if gzipped else os.fstat(raw.fileno()).st_size
            raw.seek(0)
            with _Gunzipped(raw) if gzipped else nullcontext(raw) as fp:
                ds = _read_dataset(fp)
                if _tag("Rows") not in ds or _tag("Columns") not in ds:
                    raise _SkipFileError(_no_pixels_reason(ds))
                modality = _text(ds, "Modality")
                if modality in _NOT_IMAGES:
                    raise _SkipFileError(f"a {modality} object, not an image")
                vendor = _text(ds, "Manufacturer").upper()
                reverse, split = ge_reverse_phase(ds, vendor)
                file = _new_file(path, ds, _syntax_of(ds), known, split=split)
                file.flip_rows, file.gzipped = reverse, gzipped
                file.scale = _slope_scale(ds, modality)
                problem = _pixel_format_problem(ds, file)
                if problem:
                    raise _SkipFileError(problem)
                offset = _locate_pixels(fp, ds, size, file)
                file.pixel_offset = offset if file.bits_allocated in (8, 16, 32) else None
                file.table = value_table(ds, file)
                return _checked(_frames_of(ds, file, vendor))
    except _SkipFileError:
        raise
    except OSError as exc:
        raise _SkipFileError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:
        reason = f"unreadable or truncated DICOM header ({type(exc).__name__})"
        raise _SkipFileError(reason) from None


def _pixel_format_problem(ds: Dataset, file: _File) -> str | None:
    """Why the declared pixel format cannot be read (checked before anything is allocated)."""
    if file.samples != 1:
        if file.samples == 3:
            return "colour (RGB) images are not supported as scans"
        return f"SamplesPerPixel is {file.samples}: a scan has one sample per pixel"
    if file.rows == 0 or file.cols == 0:
        return f"its image has {file.rows}x{file.cols} pixels (Rows or Columns is 0)"
    if file.bits_allocated not in _BITS_ALLOCATED:
        return f"BitsAllocated {file.bits_allocated} is not a pixel size (1, 8, 16 or 32)"
    if not 0 < file.bits_stored <= file.bits_allocated:
        return f"BitsStored {file.bits_stored} does not fit BitsAllocated {file.bits_allocated}"
    representation = _ushort(ds, "PixelRepresentation", 0)
    if representation not in (0, 1):
        return f"PixelRepresentation {representation} is neither 0 (unsigned) nor 1 (signed)"
    if file.n_frames > MAX_FRAMES_PER_FILE:
        return (
            f"it declares {file.n_frames} frames, more than the {MAX_FRAMES_PER_FILE} "
            "one file may hold"
        )
    return None


def _frame_problem(frame: _Frame) -> str | None:
    """Why a frame's orientation, spacing or rescale is unusable (NaN, zero, parallel)."""
    problem = orientation_problem(frame.orientation) or spacing_problem(frame.pixel_spacing)
    if problem:
        return problem
    if not (math.isfinite(frame.slope) and math.isfinite(frame.intercept)):
        return f"its rescale (slope {frame.slope:g}, intercept {frame.intercept:g}) is not finite"
    if frame.slope == 0:
        return "its RescaleSlope is 0: every pixel would have the same value"
    if frame.file.table is None and max(map(abs, _value_range(frame))) >= _FLOAT32_OVERFLOW:
        return "its rescaled values do not fit 32-bit floating point"
    return None


def _checked(frames: list[_Frame]) -> list[_Frame]:
    """The frames, or the file skipped with the first frame's problem (never a NaN later).
    Frames of one file mostly share orientation, spacing and rescale: those are checked once."""
    checked: set[tuple] = set()
    for frame in frames:
        frame.thickness = finite_positive(frame.thickness)
        shared = (frame.orientation, frame.pixel_spacing, frame.slope, frame.intercept)
        problem = position_problem(frame.position)
        if problem is None and shared not in checked:
            problem = _frame_problem(frame)
            checked.add(shared)
        if problem:
            where = f" (frame {frame.index + 1} of {len(frames)})" if len(frames) > 1 else ""
            raise _SkipFileError(problem + where)
    return frames


def _frames_of(ds: Dataset, file: _File, vendor: str) -> list[_Frame]:
    if _tag("PerFrameFunctionalGroupsSequence") in ds:
        return _enhanced_frames(ds, file)
    if "MOSAIC" in file.image_type and file.n_frames == 1:
        return _mosaic_frames(ds, file)
    tiles = _uih_tiles(ds, vendor) if file.n_frames == 1 else None
    if tiles:
        return _uih_grid_frames(ds, file, tiles)
    if file.n_frames > 1:
        return _legacy_frames(ds, file)
    slope, intercept = _rescale(ds, file)
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
            order=_order(file),
        )
    ]


def _enhanced_frames(ds: Dataset, file: _File) -> list[_Frame]:
    """Frames of an enhanced multi-frame image, from its functional groups."""
    frames = []
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != file.n_frames:
        raise _SkipFileError(
            f"it declares {file.n_frames} frames but describes {len(per_frame)} "
            "in its per-frame functional groups"
        )
    for index in range(file.n_frames):
        item = per_frame[index]
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
        slope, intercept = _rescale(
            _frame_group(ds, item, "PixelValueTransformationSequence"), file
        )
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
                order=_order(
                    file,
                    index,
                    temporal=_int(content, "TemporalPositionIndex"),
                    when=_acquisition_time(content),
                ),
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
    slope, intercept = _rescale(ds, file)
    order = _order(file)
    pixel_spacing = _floats(ds, "PixelSpacing", 2)
    return [
        _Frame(
            file,
            k,
            file.rows,
            file.cols,
            position=positions[k],
            orientation=iop,
            pixel_spacing=pixel_spacing,
            thickness=spacing,
            slope=slope,
            intercept=intercept,
            order=(*order[:-1], k),
        )
        for k in range(file.n_frames)
    ]
